from .searcher import (SELECTIONS, CALIBRATIONS, SELECT_ON, NONE, _train_class_counts, DemosConfig, select_fixed_demonstrations, DemosSearcher)  # noqa: F401
