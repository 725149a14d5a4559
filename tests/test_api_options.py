"""The three API classes' shared base: typed :class:`FitOptions` passed as an object, a wrong keyword to any
constructor or ``fit`` refused in one line naming the class and the nearest valid keyword (checked on every valid
keyword with one character dropped or changed), and the teacher protocol / classifier head each stage owns."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

from distill import Distiller
from distill.api import ALIASES as DISTILL_ALIASES
from distill.config import StudentConfig
from distill.hints import FitNets, FitNetsConfig
from distill.losses import get_loss
from distill.method import METHODS
from distill.topk import TopK, TopKOutputs, top_of
from ensemble import Ensemble
from ensemble.base.errors import ConfigError, ModelError
from ensemble.config import EnsembleConfig, StageConfig
from ensemble.engine.fit import FitOptions
from ensemble.models.heads import find_head
from ensemble.schema.sections import ResourcesConfig
from ensemble.stage import fit_options
from ensemble.training.teacher import ModuleOutputs, TeacherOutputs, as_teacher
from specialists import SpecialistEnsemble
from specialists.config import CombineConfig, SpecialistsConfig

BUILDERS = {
    "Ensemble": lambda **kw: Ensemble(lambda: nn.Linear(2, 3), **kw),
    "SpecialistEnsemble": lambda **kw: SpecialistEnsemble(nn.Sequential(nn.Linear(2, 3)), **kw),
    "Distiller": lambda **kw: Distiller(nn.Linear(2, 3), lambda: nn.Linear(2, 3), **kw),
}
CLASSES = {"Ensemble": Ensemble, "SpecialistEnsemble": SpecialistEnsemble, "Distiller": Distiller}
SECTIONS = {"Ensemble": EnsembleConfig, "SpecialistEnsemble": SpecialistsConfig, "Distiller": StudentConfig}
ALIASES = {"Ensemble": ["n_members"], "SpecialistEnsemble": ["n_specialists", *CombineConfig.model_fields],
           "Distiller": [*DISTILL_ALIASES, *METHODS]}


def _parameters(method) -> tuple[list[str], list[str]]:
    """(keyword-only, positional-or-keyword) parameter names of ``method``, ``self`` left out."""
    params = list(inspect.signature(method).parameters.values())[1:]
    return ([p.name for p in params if p.kind == p.KEYWORD_ONLY],
            [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD])


def constructor_keywords(name: str) -> tuple[list[str], set[str]]:
    """Every keyword the constructor takes by name (its own, the section's fields, the aliases, FitOptions'), and
    every name that binds at all (those plus its positional parameters)."""
    cls = CLASSES[name]
    own, positional = _parameters(cls.__init__)
    fields = [f for f in SECTIONS[name].model_fields if f not in positional]
    valid = sorted({*own, *fields, *ALIASES[name], *(f.name for f in dataclasses.fields(FitOptions))})
    return valid, {*valid, *positional}


def mutations(word: str) -> set[str]:
    """``word`` with one character dropped, or changed to another letter."""
    out = {word[:i] + word[i + 1:] for i in range(len(word))}
    for i, char in enumerate(word):
        out |= {word[:i] + other + word[i + 1:] for other in ("q", "x") if other != char}
    return {m for m in out if m and m.isidentifier()}


def check_refusal(message: str, where: str, typo: str, right: str, valid: list[str]) -> str | None:
    """None when ``message`` is the one-line refusal of ``typo`` naming ``where`` and suggesting ``right`` (or a
    valid keyword at least as near to the typo, difflib's measure, when another one is as close); else the reason."""
    prefix = f"{where}: unknown keyword argument {typo!r}; "
    if "\n" in message or not message.startswith(prefix):
        return f"not one line naming {where} and {typo!r}: {message!r}"
    hint = message.removeprefix(prefix)
    similarity = difflib.SequenceMatcher(None, typo, right).ratio()
    if similarity < 0.6:  # too far for any suggestion: then every valid keyword is listed
        return None if hint.startswith("expected one of ") and right in hint else f"{right!r} not listed: {hint}"
    if not (hint.startswith("did you mean '") and hint.endswith("'?")):
        return f"no suggestion: {hint}"
    suggested = hint.removeprefix("did you mean '").removesuffix("'?")
    if suggested == right:
        return None
    nearer = suggested in valid and difflib.SequenceMatcher(None, typo, suggested).ratio() >= similarity
    return None if nearer else f"suggested {suggested!r}, not {right!r}"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_keyword_mistyped_is_refused_in_one_line_naming_the_class_and_the_right_keyword(name):
    valid, binds = constructor_keywords(name)
    assert {"output_dir", "num_cpus", "options", "tracking_uri", "seed"} <= set(valid)
    failures, exact, cases = [], 0, 0
    for right in valid:
        for typo in sorted(mutations(right) - binds):
            cases += 1
            with pytest.raises(ConfigError) as err:
                BUILDERS[name](**{typo: 3})
            reason = check_refusal(str(err.value), name, typo, right, valid)
            if reason:
                failures.append(reason)
            exact += str(err.value).endswith(f"did you mean {right!r}?")
    assert not failures, failures[:10]
    assert cases > 500 and exact > 0.9 * cases, (cases, exact)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_fit_keyword_mistyped_is_refused_in_one_line_naming_the_class(name):
    """``fit`` too: not Python's bare ``TypeError: fit() got an unexpected keyword argument``."""
    model = BUILDERS[name]()
    own, positional = _parameters(type(model).fit)
    valid = [*own, *positional]
    cases = 0
    for right in valid:
        for typo in sorted(mutations(right) - set(valid)):
            cases += 1
            with pytest.raises(ConfigError) as err:
                model.fit(None, None, **{typo: 1})
            reason = check_refusal(str(err.value), f"{name}.fit", typo, right, valid)
            assert reason is None, reason
    assert cases > 20


def test_the_message_is_exact_for_a_fit_typo():
    with pytest.raises(ConfigError) as err:
        BUILDERS["Ensemble"]().fit(None, None, tset=None)
    assert str(err.value) == "Ensemble.fit: unknown keyword argument 'tset'; did you mean 'test'?"


def test_fit_options_are_one_typed_object_and_keywords_name_its_fields(tmp_path):
    options = FitOptions(output_dir=tmp_path, num_cpus=2.0, show_progress=False)
    ens = BUILDERS["Ensemble"](options=options, num_gpus=0.5)
    assert ens.options == dataclasses.replace(options, num_gpus=0.5)
    assert options.num_gpus == 0.0, "the caller's options are not changed"
    given = BUILDERS["Distiller"](options=options)
    assert given.options == options, "given options are used as they are, not the section's resources"


@pytest.mark.parametrize("name, folder", [("Ensemble", "runs/ensemble"), ("SpecialistEnsemble", "runs/specialists"),
                                          ("Distiller", "runs/student")])
def test_default_options_are_the_class_folder_on_the_section_resources(name, folder):
    model = BUILDERS[name](resources={"num_cpus": 3, "num_gpus": 0.25, "workers_per_model": 2})
    assert (model.options.output_dir, model.options.num_cpus, model.options.num_gpus,
            model.options.workers_per_model) == (folder, 3, 0.25, 2)


def test_options_of_another_type_are_one_line():
    with pytest.raises(ConfigError, match=r"^SpecialistEnsemble: options must be a FitOptions .*got dict$"):
        BUILDERS["SpecialistEnsemble"](options={"num_cpus": 2})


def test_the_stages_fit_options_are_a_fit_options_object():
    options = fit_options(StageConfig(), ResourcesConfig(num_cpus=2, num_gpus=0.5), Path("out"), None, None, False)
    assert isinstance(options, FitOptions)
    assert (options.output_dir, options.num_cpus, options.num_gpus, options.show_progress) == \
        (Path("out"), 2, 0.5, False)


def test_an_unknown_fit_option_is_one_line_naming_the_nearest_field():
    with pytest.raises(ConfigError) as err:
        FitOptions().updated("SpecialistEnsemble", {"n_specialists": 2})
    assert str(err.value).startswith("SpecialistEnsemble: unknown keyword argument 'n_specialists'; ")
    with pytest.raises(ConfigError) as err:
        FitOptions().updated("Distiller", {"in_proces": True})
    assert str(err.value) == "Distiller: unknown keyword argument 'in_proces'; did you mean 'in_process'?"


# --- each layer's own teacher and head ---


class PlainTeacher:
    """A teacher with only what the core protocol asks: a name, an online module, (no) cached outputs."""

    def teacher_name(self) -> str:
        return "plain"

    def online(self) -> nn.Module:
        return ModuleOutputs(nn.Linear(2, 3))

    def cached_outputs(self, splits, temperature):
        return None


def test_a_teacher_needs_no_more_than_the_core_protocol():
    teacher = PlainTeacher()
    assert as_teacher(teacher) is teacher
    assert {f.name for f in dataclasses.fields(TeacherOutputs)} == {"probs", "logits"}, "no top-K in the core"


def test_fitnets_asks_for_a_hint_network_in_one_line():
    class Context:
        teacher, teacher_id = PlainTeacher(), "plain"

    method = FitNets(FitNetsConfig(hint_layer="0", guided_layer="0"))
    with pytest.raises(ConfigError, match=r"^student.method: 'fitnets' needs a teacher with a hint_module\(\)"):
        method.plan(Context(), None)


def test_top_k_targets_are_distills_and_index_by_row():
    top = TopK(torch.tensor([[2, 0], [1, 2], [0, 1]]), torch.log(torch.tensor([[0.5, 0.3], [0.6, 0.3], [0.7, 0.2]])),
               torch.log(torch.tensor([0.2, 0.1, 0.1])))
    rows = TopKOutputs(top=top)[torch.tensor([2, 0])].to("cpu")
    assert isinstance(rows, TopKOutputs) and rows.probs is None
    assert rows.top.indices.tolist() == [[0, 1], [2, 0]]
    assert top_of(TeacherOutputs(torch.full((2, 3), 1 / 3))) is None and top_of(rows) is rows.top
    # KL on K + 1 bins at T = 1 for a uniform student: Σ p_i log(p_i / (1/3)) + R log(R / (1/3)), by hand.
    z = torch.zeros(2, 3)
    by_hand = [0.5 * torch.log(torch.tensor(1.5)) + 0.3 * torch.log(torch.tensor(0.9))
               + 0.2 * torch.log(torch.tensor(0.6)),
               0.7 * torch.log(torch.tensor(2.1)) + 0.2 * torch.log(torch.tensor(0.6))
               + 0.1 * torch.log(torch.tensor(0.3))]
    loss = get_loss("kd")(z, torch.tensor([0, 1]), TopKOutputs(top=top[torch.tensor([0, 2])]), 1.0, 1.0)["soft"]
    assert float(loss) == pytest.approx(float(sum(by_hand) / 2), abs=1e-6)


def test_find_head_names_the_callers_field():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    assert find_head(model)[0] == "2" and find_head(model, "0")[0] == "0"
    with pytest.raises(ModelError, match=r"^my.field: the thing has no module named 'nope'$"):
        find_head(model, "nope", "my.field", "thing")
    with pytest.raises(ModelError, match=r"^my.field: '1' is a ReLU, not an nn.Linear$"):
        find_head(model, "1", "my.field", "thing")


def test_the_specialists_head_error_names_specialists_head():
    with pytest.raises(ModelError, match=r"^specialists.head: the generalist has no linear classifier head"):
        SpecialistEnsemble(nn.Sequential(nn.Flatten()))


def test_the_students_head_error_names_the_students_field_before_any_training(tmp_path):
    """A transfer set that leaves a class out shifts the student's classifier biases: a student without a linear head
    is refused naming its own setting (student.transfer), never the specialists', and before anything trains."""
    x = torch.randn(12, 2)
    y = torch.tensor([0, 1, 2] * 4)
    distiller = Distiller(nn.Linear(2, 3), lambda: nn.Sequential(nn.Flatten()), omit_classes=[2],
                          output_dir=tmp_path, in_process=True, show_progress=False)
    with pytest.raises(ModelError) as err:
        distiller.fit((x, y), (x, y))
    message = str(err.value)
    assert message.startswith("student.transfer: the student has no linear classifier head"), message
    assert "specialists" not in message and "\n" not in message
    assert not any(tmp_path.iterdir()), "nothing trained"
