"""Moved to :mod:`segexpr.inference.editor`; this path still works (``from segexpr.editor import ExpressionEditor``)."""
from segexpr.inference.editor import *  # noqa: F401,F403
from segexpr.inference.editor import (FACE_CLASSES, MIN_IMAGE_SIZE, RANGE_SLACK, ExpressionEditor,  # noqa: F401
                                      as_expression_labels, check_aus, check_images)
