"""A teacher from outside the package: the ensemble's first member alone.

Used by tests/test_plugins.py through ``imports: [.../first_member_teacher.py]`` and
``student.teacher: first_member``.
"""

from distill import register_teacher
from ensemble.training.teacher import ModuleTeacher


@register_teacher("first_member")
def first_member(stages, config):
    return ModuleTeacher(stages.ensemble.members_[0], "first_member")
