"""Published UCI numbers (RMSE, test log-likelihood; mean and standard error over 20 splits).

Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation", Table 1: VI (Graves 2011),
PBP (Hernandez-Lobato & Adams 2015) and MC dropout, 40 epochs. "dropout-grid" is the README of
their DropoutUncertaintyExps repository (grid search over dropout rate and tau, longer training).
"""

PUBLISHED = {
    "boston": {"VI": (4.32, 0.29, -2.90, 0.07), "PBP": (3.01, 0.18, -2.57, 0.09),
               "MC dropout": (2.97, 0.19, -2.46, 0.06), "dropout-grid": (2.90, 0.18, -2.40, 0.04)},
    "concrete": {"VI": (7.19, 0.12, -3.39, 0.02), "PBP": (5.67, 0.09, -3.16, 0.02),
                 "MC dropout": (5.23, 0.12, -3.04, 0.02), "dropout-grid": (4.82, 0.16, -2.93, 0.02)},
    "energy": {"VI": (2.65, 0.08, -2.39, 0.03), "PBP": (1.80, 0.05, -2.04, 0.02),
               "MC dropout": (1.66, 0.04, -1.99, 0.02), "dropout-grid": (0.54, 0.06, -1.21, 0.01)},
    "yacht": {"VI": (6.89, 0.67, -2.70, 0.05), "PBP": (1.02, 0.05, -1.63, 0.02),
              "MC dropout": (1.11, 0.09, -1.55, 0.03), "dropout-grid": (0.67, 0.05, -1.25, 0.01)},
    # the sets no default was tuned on (issue 14's protocol). MC dropout: Table 1 as the README of
    # DropoutUncertaintyExps quotes it ("original" column, commit 04604eb), whose +- is the standard deviation
    # over the splits, divided here by sqrt(splits - 1) like the rows above; dropout-grid: that README's grid search
    "kin8nm": {"MC dropout": (0.10, 0.00, 0.95, 0.01), "dropout-grid": (0.08, 0.00, 1.14, 0.01)},
    "naval": {"MC dropout": (0.01, 0.00, 3.80, 0.01), "dropout-grid": (0.00, 0.00, 4.45, 0.00)},
    "power": {"MC dropout": (4.02, 0.04, -2.80, 0.01), "dropout-grid": (4.01, 0.04, -2.80, 0.01)},
    "protein": {"MC dropout": (4.36, 0.02, -2.89, 0.005), "dropout-grid": (4.27, 0.02, -2.87, 0.00)},
    "wine": {"MC dropout": (0.62, 0.01, -0.93, 0.01), "dropout-grid": (0.62, 0.01, -0.93, 0.01)},
}

# how many splits the published numbers average: 20, but protein's standard splits are 5
SPLITS = {"protein": 5}
