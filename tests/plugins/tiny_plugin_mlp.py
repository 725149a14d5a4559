"""A model and a loss from outside the package, registered in one file.

Used by tests/test_edges_config.py through ``imports: [.../tiny_plugin_mlp.py]``, ``ensemble.model.name:
tiny_plugin_mlp`` and ``student.loss: plugin_kd``: both are looked up where the model trains, in a Ray actor.
"""

import math

from torch import nn

from distill import register_loss
from distill.losses import kd
from ensemble import register_model


@register_model("tiny_plugin_mlp")
def tiny_plugin_mlp(input_shape, num_classes, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@register_loss("plugin_kd")
def plugin_kd(student_logits, labels, teacher, temperature, alpha, label_smoothing=0.0):
    """The paper's loss, its terms renamed so the test can tell this loss trained the student."""
    terms = kd(student_logits, labels, teacher, temperature, alpha, label_smoothing)
    return {f"plugin_{name}": value for name, value in terms.items()}
