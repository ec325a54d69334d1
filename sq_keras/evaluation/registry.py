"""The attack registry: every attack of the suite, described in one place.

An `AttackSpec` names the attack function of `sq_keras.attacks`, how its
keyword settings derive from eps and the suite's `AttackSettings`, its kind,
whether it iterates and returns query counts, which model it runs on (the
target, the transfer source, or the target through a BPDA stand-in), whether
the convergence check may rerun it with twice the steps, and which presets
include it. The attack names, presets, the attack sets of the masking checks,
the skip reasons and the run dispatch are all read from a `Registry`.

Every plain gradient attack also has a BPDA version per stand-in of
`attacks.STAND_INS`, derived from it (`through_stand_in`) and named
`bpda_<stand_in>:<attack>` (`bpda_identity:apgd_ce`). PGD-CE's keep their
first names, `bpda_identity` and `bpda_smooth` (`bpda_identity:pgd` is an
alias), so older reports keep their meaning.

A `Preset` may also choose its members per model and bring its own setting
defaults: `autoattack` runs its gradient attacks through the identity BPDA
stand-in on a model with a quantizer, with AutoAttack's budgets, as a cascade:

```python
from sq_keras.evaluation import registry

plan = registry.REGISTRY.plan(["autoattack"], registry.AttackSettings(), target=target)
plan.attacks          # ["bpda_identity:apgd_ce", ..., "square"] on a quantized model
plan.settings.square_queries, plan.worst_case_only          # 5000, True
```
"""

import dataclasses
import functools
import typing

from sq_keras import attacks
from sq_keras.evaluation.presets import AUTOATTACK  # noqa: F401 (re-exported)
from sq_keras.evaluation.presets import PRESET_TABLE
from sq_keras.evaluation.presets import STRONG  # noqa: F401 (re-exported)
from sq_keras.evaluation.presets import Preset  # noqa: F401 (re-exported)

GRADIENT = "gradient"  # White-box: gradients of the model it runs on.
GRADIENT_FREE = "gradient_free"  # Only the target's outputs.
TRANSFER = "transfer"  # Crafted on another model, scored on the target.
KINDS = (GRADIENT, GRADIENT_FREE, TRANSFER)

DOUBLED = "pgd_2x_steps"  # Report entry of the convergence check's 2x-steps run.


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Hyper-parameters shared by the suite.

    Attributes:
        pgd_steps: Steps of PGD, APGD, BPDA and transfer attacks.
        restarts: Random restarts of PGD-based attacks.
        square_queries: Query budget per example of the Square Attack.
        step_size_factor: PGD step size is `step_size_factor * eps /
            pgd_steps` (2.5 as in Madry et al. 2018, so any point of the
            ball is reachable from any start).
        square_p_init: Initial window share of the Square Attack.
        smooth_alpha: Steepness of the "smooth" BPDA stand-in.
        seed: Seed of every random start.
    """

    pgd_steps: int = 100
    restarts: int = 1
    square_queries: int = 1000
    step_size_factor: float = 2.5
    square_p_init: float = 0.8
    smooth_alpha: float = 10.0
    seed: int = 0

    def __post_init__(self):
        for name in ("pgd_steps", "restarts", "square_queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")


# ---------------------------------------------------------------------------
# The models an attack can run on.


class AttackedModel:
    """Which model an attack runs on.

    `model_fn(target, source, settings)` is what the attack function gets,
    `skip_reason(target, source)` says why it cannot run (None: it can), and
    `describe(settings)` adds to the settings recorded in the report.
    """

    def model_fn(self, target, source, settings):
        raise NotImplementedError

    def skip_reason(self, target, source):
        del target, source
        return None

    def describe(self, settings):
        del settings
        return {}


@dataclasses.dataclass(frozen=True)
class OnTarget(AttackedModel):
    """The attack runs on the evaluated model itself."""

    def model_fn(self, target, source, settings):
        del source, settings
        return target.model_fn


@dataclasses.dataclass(frozen=True)
class OnSource(AttackedModel):
    """The attack is crafted on the transfer source model."""

    def model_fn(self, target, source, settings):
        del target, settings
        return source.model_fn

    def skip_reason(self, target, source):
        del target
        return "no source model given (--source_model)" if source is None else None

    def describe(self, settings):
        del settings
        return {"crafted_on": "source model"}


@dataclasses.dataclass(frozen=True)
class ThroughStandIn(AttackedModel):
    """BPDA: the target's forward pass with a stand-in's backward pass.

    Wraps the target's Keras model with `attacks.bpda`, so any gradient
    attack can run through the stand-in ("identity" or "smooth").
    """

    stand_in: str

    def model_fn(self, target, source, settings):
        del source
        return attacks.bpda(
            target.keras_model, stand_in=self.stand_in, smooth_alpha=settings.smooth_alpha
        )

    def skip_reason(self, target, source):
        del source
        if not target.has_quantizer:
            return "model has no SoftQuantization layer"
        if target.keras_model is None:
            return "BPDA needs the Keras model (.keras file or model_dir), not a SavedModel"
        return None

    def describe(self, settings):
        extra = {"smooth_alpha": settings.smooth_alpha} if self.stand_in == "smooth" else {}
        return {"stand_in": self.stand_in, **extra}


# ---------------------------------------------------------------------------
# Keyword settings of the attack functions.


def pgd_step_size(eps, settings):
    """`step_size_factor * eps / pgd_steps`."""
    return settings.step_size_factor * eps / settings.pgd_steps


def fgsm_kwargs(eps, settings, *, loss):
    del eps, settings
    return {"loss": loss}


def pgd_kwargs(eps, settings, *, loss):
    return {
        "num_steps": settings.pgd_steps,
        "step_size": pgd_step_size(eps, settings),
        "restarts": settings.restarts,
        "random_start": True,
        "seed": settings.seed,
        "loss": loss,
    }


def apgd_kwargs(eps, settings, *, loss):
    del eps
    return {"num_steps": settings.pgd_steps, "loss": loss, "seed": settings.seed}


# AutoAttack's targeted attacks run against the wrong classes of the 9
# largest clean logits (Croce and Hein 2020, section 5).
NUM_TARGETS = 9


def targeted_kwargs(eps, settings):
    """APGD-T and FAB-T: `pgd_steps` steps per target, `NUM_TARGETS` targets."""
    del eps
    return {"num_steps": settings.pgd_steps, "num_targets": NUM_TARGETS, "seed": settings.seed}


def square_kwargs(eps, settings):
    del eps
    return {
        "max_queries": settings.square_queries,
        "p_init": settings.square_p_init,
        "seed": settings.seed,
    }


# ---------------------------------------------------------------------------
# Entries.


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite.

    Attributes:
        name: Name in `--attacks` and in the report.
        attack: Function of `sq_keras.attacks`, called as
            `attack(model_fn, x, y, eps=eps, **kwargs(eps, settings))`; its
            `__name__` is the recorded settings' "attack".
        kwargs: `(eps, AttackSettings) -> dict` of its keyword settings.
        kind: `GRADIENT`, `GRADIENT_FREE` or `TRANSFER`.
        iterative: Whether it takes several steps (compared with one-step
            attacks by the checks).
        returns_queries: Whether `attack` returns `(x_adv, queries)`.
        model: Where it runs: `OnTarget()`, `OnSource()` or
            `ThroughStandIn(stand_in)`.
        presets: The presets that include it.
        doubles: Whether the convergence check may rerun it with 2x steps
            (the first such attack run is rerun).
    """

    name: str
    attack: object
    kwargs: object
    kind: str
    iterative: bool = False
    returns_queries: bool = False
    model: object = OnTarget()
    presets: tuple = ("strong",)
    doubles: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={self.kind!r}")

    @property
    def plain_gradient(self):
        """A gradient attack on the target's own gradients."""
        return self.kind == GRADIENT and isinstance(self.model, OnTarget)

    @property
    def bpda(self):
        return isinstance(self.model, ThroughStandIn)

    def settings(self, eps, settings):
        """The settings dict recorded in the report (and the attack's kwargs)."""
        return {
            "attack": self.attack.__name__,
            **self.kwargs(eps, settings),
            **self.model.describe(settings),
        }


def through_stand_in(spec, stand_in, *, name, **changes):
    """`spec` run through the BPDA `stand_in` on the target, as a new entry."""
    return dataclasses.replace(spec, name=name, model=ThroughStandIn(stand_in), **changes)


def bpda_name(stand_in, attack):
    """The name of `attack`'s BPDA version through `stand_in`."""
    return f"bpda_{stand_in}:{attack}"


def bpda_versions(entries, *, exclude=()):
    """Every plain gradient entry through every stand-in, opt-in (no preset)."""
    return tuple(
        through_stand_in(
            spec, stand_in, name=bpda_name(stand_in, spec.name), presets=(), doubles=False
        )
        for stand_in in attacks.STAND_INS
        for spec in entries
        if spec.plain_gradient and spec.name not in exclude
    )


def _pgd(name, loss, *, kind=GRADIENT, **fields):
    kwargs = functools.partial(pgd_kwargs, loss=loss)
    return AttackSpec(name, attacks.pgd, kwargs, kind, iterative=True, **fields)


def _apgd(loss):
    kwargs = functools.partial(apgd_kwargs, loss=loss)
    return AttackSpec(f"apgd_{loss}", attacks.apgd, kwargs, GRADIENT, iterative=True)


_PGD_CE = _pgd("pgd", "ce", presets=("strong", "fast"), doubles=True)

# Suite order: the order of reports and of the cascade (cheapest first).
PLAIN_ENTRIES = (
    AttackSpec(
        "fgsm",
        attacks.fgsm,
        functools.partial(fgsm_kwargs, loss="ce"),
        kind=GRADIENT,
        presets=("strong", "fast"),
    ),
    _PGD_CE,
    _pgd("pgd_cw", "margin", doubles=True),
    _apgd("ce"),
    _apgd("dlr"),
    # Opt-in by name or through the `autoattack` preset.
    AttackSpec(
        "apgd_t", attacks.apgd_targeted, targeted_kwargs, GRADIENT, iterative=True, presets=()
    ),
    AttackSpec(
        "fab_t", attacks.fab_targeted, targeted_kwargs, GRADIENT, iterative=True, presets=()
    ),
    AttackSpec(
        "square",
        attacks.square,
        square_kwargs,
        kind=GRADIENT_FREE,
        iterative=True,
        returns_queries=True,
        presets=("strong", "fast"),
    ),
    _pgd("transfer", "ce", kind=TRANSFER, model=OnSource()),
)

# PGD-CE through BPDA keeps the names of the published table.
BPDA_PGD = {stand_in: f"bpda_{stand_in}" for stand_in in attacks.STAND_INS}
ALIASES = {bpda_name(stand_in, "pgd"): name for stand_in, name in BPDA_PGD.items()}

ENTRIES = (
    *PLAIN_ENTRIES,
    through_stand_in(_PGD_CE, "identity", name=BPDA_PGD["identity"], presets=("strong",)),
    through_stand_in(
        _PGD_CE, "smooth", name=BPDA_PGD["smooth"], presets=("strong",), doubles=False
    ),
    *bpda_versions(PLAIN_ENTRIES, exclude=("pgd",)),
)


class _ModelKind(typing.NamedTuple):
    """Stands for a `Target` of one kind where only its kind matters."""

    has_quantizer: bool
    keras_model: object = True


class AttackPlan(typing.NamedTuple):
    """What to run: attack names in run order, the settings, the mode."""

    attacks: list
    settings: AttackSettings
    worst_case_only: bool


# ---------------------------------------------------------------------------
# The registry and what derives from it.


class Registry:
    """Attack entries in suite order, presets, and everything derived from them."""

    def __init__(self, entries, *, presets=(), aliases=None):
        self._entries = {spec.name: spec for spec in entries}
        if len(self._entries) != len(entries):
            raise ValueError(f"Attack names repeat: {[spec.name for spec in entries]}")
        self._presets = {preset.name: preset for preset in presets}
        self._aliases = dict(aliases or {})

    def _canonical(self, name):
        return self._aliases.get(name, name)

    def __getitem__(self, name):
        name = self._canonical(name)
        if name not in self._entries:
            raise ValueError(f"Unknown attack {name!r}.")
        return self._entries[name]

    def __contains__(self, name):
        return self._canonical(name) in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def extended(self, *entries):
        """A registry with `entries` appended to the suite."""
        return Registry([*self, *entries], presets=self._presets.values(), aliases=self._aliases)

    def mapped(self, change):
        """A registry with `change(spec)` in place of every entry, same presets."""
        return Registry(
            [change(spec) for spec in self], presets=self._presets.values(), aliases=self._aliases
        )

    @property
    def names(self):
        return tuple(self._entries)

    @property
    def presets(self):
        """`{preset: names}`, entry presets in order of first appearance, then
        the `Preset`s (their members as on a model without a quantizer)."""
        order = dict.fromkeys(p for spec in self for p in spec.presets)
        derived = {p: tuple(s.name for s in self if p in s.presets) for p in order}
        return {**derived, **{name: self._plain_members(name) for name in self._presets}}

    def _plain_members(self, name):
        """Members of `Preset` `name` in suite order, as on a model without a
        quantizer."""
        names = {member for _, member in self._expand(self._presets[name])}
        return tuple(spec.name for spec in self if spec.name in names)

    def _expand(self, preset):
        """`(preset, entry name)` of every member of `preset`: its own, the
        entries naming it in `presets`, and those of the presets it includes
        (each paired with the preset that resolves it)."""
        requested = [(preset, member) for member in preset.members]
        requested += [(None, spec.name) for spec in self if preset.name in spec.presets]
        for name in preset.includes:
            requested += self._expand(self._presets[name])
        return requested

    def names_where(self, predicate):
        """Names of the entries for which `predicate(spec)` holds."""
        return tuple(spec.name for spec in self if predicate(spec))

    def skip_reason(self, name, target, source):
        """Why attack `name` cannot run on `target`, or None."""
        return self[name].model.skip_reason(target, source)

    def help(self):
        """The attack list of the `--attacks` flag."""
        described = [
            f"{name} ({self._presets[name].description})" if name in self._presets else name
            for name in self.presets
        ]
        return (
            f"Comma list of {', '.join(self.names)} or presets ({', '.join(described)}). "
            f"{', '.join(self._aliases)}: aliases of {', '.join(self._aliases.values())}."
        )

    def _member(self, preset, name, target):
        """Preset member `name` on `target`: its BPDA version where it has a
        quantizer and BPDA can run there (else plain; `bpda_run` then fails)."""
        spec = self[name]
        if preset is None or preset.stand_in is None or target is None:
            return spec.name
        if not (spec.plain_gradient and target.has_quantizer):
            return spec.name
        bpda = self._canonical(bpda_name(preset.stand_in, spec.name))
        usable = bpda in self._entries and self.skip_reason(bpda, target, None) is None
        return bpda if usable else spec.name

    def _requested(self, names):
        """`(preset or None, entry name)` of every requested attack.

        Raises:
            ValueError: An unknown name; the message lists the valid ones.
        """
        presets = self.presets
        requested = []
        for name in (name.strip() for name in names):
            if name in self._presets:
                requested += self._expand(self._presets[name])
            elif name in presets:
                requested += [(None, member) for member in presets[name]]
            elif name in self:
                requested.append((None, self._canonical(name)))
            elif name:
                raise ValueError(
                    f"Unknown attack {name!r}. Valid attacks: {', '.join(self.names)}; "
                    f"presets: {', '.join(presets)}."
                )
        if not requested:
            raise ValueError(f"No attack given. Valid attacks: {', '.join(self.names)}.")
        return requested

    def resolve(self, names, *, target=None):
        """Expands presets and validates attack names, keeping suite order.

        A `Preset`'s gradient members become their BPDA versions when
        `target` (a `Target`) holds a quantizer; they keep the place of the
        plain entry in the order.

        Raises:
            ValueError: An unknown name; the message lists the valid ones.
        """
        chosen = self._ordered(names, target)
        return sorted(chosen, key=chosen.get)

    def columns(self, names):
        """Every attack `names` runs on a model with a quantizer or on one
        without, in suite order: the report columns of several models."""
        chosen = {}
        for has_quantizer in (True, False):
            chosen.update(self._ordered(names, _ModelKind(has_quantizer)))
        return sorted(chosen, key=chosen.get)

    def _ordered(self, names, target):
        """`{resolved name: sort key}` of `names` on `target`."""
        position = {name: i for i, name in enumerate(self.names)}
        chosen = {}
        for preset, name in self._requested(names):
            resolved = self._member(preset, name, target)
            chosen[resolved] = (position[name], resolved != name)
        return chosen

    def requested_presets(self, names):
        """The `Preset`s named in `names`."""
        return [self._presets[n.strip()] for n in names if n.strip() in self._presets]

    def preset_settings(self, names, settings, *, explicit=()):
        """`settings` with the defaults of the requested presets, but for the
        fields named in `explicit` (those the caller set).

        Raises:
            ValueError: Two requested presets default a field differently.
        """
        defaults = {}
        for preset in self.requested_presets(names):
            for field, value in preset.defaults:
                if defaults.setdefault(field, value) != value:
                    raise ValueError(
                        f"Presets {', '.join(p.name for p in self.requested_presets(names))} "
                        f"disagree on {field}: set it explicitly."
                    )
        changes = {f: v for f, v in defaults.items() if f not in set(explicit)}
        return dataclasses.replace(settings, **changes)

    def plan(self, names, settings, *, target=None, explicit=(), worst_case_only=False):
        """What to run for `names`: attacks (per `resolve`), settings (per
        `preset_settings`) and the cascade mode (asked, or a preset's)."""
        cascade = worst_case_only or any(p.worst_case_only for p in self.requested_presets(names))
        return AttackPlan(
            self.resolve(names, target=target),
            self.preset_settings(names, settings, explicit=explicit),
            bool(cascade),
        )


REGISTRY = Registry(ENTRIES, presets=PRESET_TABLE, aliases=ALIASES)
ATTACKS = REGISTRY.names
PRESETS = REGISTRY.presets
PLAIN_GRADIENT_ATTACKS = REGISTRY.names_where(lambda s: s.plain_gradient)
SINGLE_STEP_ATTACKS = REGISTRY.names_where(lambda s: s.plain_gradient and not s.iterative)
ITERATIVE_ATTACKS = REGISTRY.names_where(lambda s: s.plain_gradient and s.iterative)
GRADIENT_FREE_ATTACKS = REGISTRY.names_where(lambda s: s.kind == GRADIENT_FREE)
TRANSFER_ATTACKS = REGISTRY.names_where(lambda s: s.kind == TRANSFER)
BPDA_ATTACKS = REGISTRY.names_where(lambda s: s.bpda)


def resolve_attacks(names, *, registry=REGISTRY, target=None):
    """Expands presets and validates attack names, keeping suite order.

    Raises:
        ValueError: An unknown name; the message lists the valid ones.
    """
    return registry.resolve(names, target=target)


def attack_settings(name, eps, settings, *, registry=REGISTRY):
    """The hyper-parameters attack `name` runs with at `eps`, as a dict.

    Raises:
        ValueError: An unknown name.
    """
    return registry[name].settings(eps, settings)
