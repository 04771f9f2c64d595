"""Moved to :mod:`segexpr.labels` (the shared vocabulary lives on the ground floor); this path still works."""
from segexpr.labels import *  # noqa: F401,F403
from segexpr.labels import (A_TO_B, AFFECTNET_CODES, ALL_REGION_GROUPS, AU_DESCRIPTIONS, AU_INDEX, AU_NAMES,  # noqa: F401
                            B_TO_A, CELEBAMASK_HQ_CLASSES, CELEBAMASK_HQ_CLASSES_B, CELEBAMASK_HQ_PARTS, CLASS_INDEX,
                            EXPRESSION_PROTOTYPES, EXPRESSIONS, FLIP_CLASS_PERMUTATION, IBUG_FLIP_PERMUTATION,
                            IBUG_PARTS, NUM_AUS, NUM_CLASSES, NUM_EXPRESSIONS, OPENFACE_AU_COLUMNS, REGION_AUS,
                            REGION_GROUPS, REGION_LANDMARKS, REGION_NAMES, SIDED_REGION_NAMES, expression_prototype)
