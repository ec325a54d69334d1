"""Tests of sq_keras.evaluation.registry: names, presets and settings derive
from one entry per attack."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from sq_keras import evaluation
from sq_keras.evaluation import registry
from tests.evaluation.fixtures import TOY
from tests.evaluation.fixtures import shift_to_grey
from tests.evaluation.fixtures import toy_kwargs

SETTINGS = evaluation.AttackSettings()
STRONG = (
    "fgsm",
    "pgd",
    "pgd_cw",
    "apgd_ce",
    "apgd_dlr",
    "apgd_t",
    "fab_t",
    "square",
    "transfer",
    "bpda_identity",
    "bpda_smooth",
)
DERIVED_BPDA = tuple(
    f"bpda_{stand_in}:{name}"
    for stand_in in ("identity", "smooth")
    for name in ("fgsm", "pgd_cw", "apgd_ce", "apgd_dlr", "apgd_t", "fab_t")
)
AUTOATTACK = ("apgd_ce", "apgd_t", "fab_t", "square")
BPDA_AUTOATTACK = ["bpda_identity:apgd_ce", "bpda_identity:apgd_t", "bpda_identity:fab_t", "square"]


class ResolveTest(parameterized.TestCase):
    def test_strong_preset_is_every_plain_attack_and_pgd_bpda_in_suite_order(self):
        # On a model without a quantizer (or an unknown one).
        self.assertEqual(evaluation.resolve_attacks(["strong"]), list(STRONG))
        self.assertEqual(evaluation.resolve_attacks(["square", "fgsm", "fgsm"]), ["fgsm", "square"])

    def test_unknown_attack_lists_valid_names(self):
        with self.assertRaisesRegex(ValueError, "Unknown attack 'cw2'.*pgd.*square.*strong"):
            evaluation.resolve_attacks(["pgd", "cw2"])

    def test_empty_list_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "No attack given. Valid attacks: fgsm"):
            evaluation.resolve_attacks(["", " "])

    def test_sweep_adds_large_eps_and_sorts(self):
        self.assertEqual(evaluation.sweep_eps([0.3, 0.1]), [0.1, 0.3, 0.5])
        self.assertEqual(evaluation.sweep_eps([0.3], add_large_eps=False), [0.3])
        self.assertEqual(evaluation.sweep_eps([0.6]), [0.6])

    @parameterized.named_parameters(("negative", -0.1), ("above_one", 1.2))
    def test_sweep_rejects_eps_outside_unit_interval(self, eps):
        with self.assertRaisesRegex(ValueError, r"\[0, 1\]"):
            evaluation.sweep_eps([eps])

    @parameterized.named_parameters(
        ("steps", {"pgd_steps": 0}),
        ("restarts", {"restarts": -1}),
        ("queries", {"square_queries": 0}),
    )
    def test_settings_reject_non_positive(self, kwargs):
        with self.assertRaisesRegex(ValueError, list(kwargs)[0]):
            evaluation.AttackSettings(**kwargs)

    def test_step_size_follows_eps(self):
        settings = evaluation.AttackSettings(pgd_steps=100)
        self.assertAlmostEqual(
            evaluation.attack_settings("pgd", 0.3, settings)["step_size"], 0.0075
        )
        self.assertEqual(evaluation.attack_settings("apgd_dlr", 0.3, settings)["loss"], "dlr")


class RegistryTest(parameterized.TestCase):
    def test_names_presets_and_attack_sets(self):
        self.assertEqual(evaluation.ATTACKS, STRONG + DERIVED_BPDA)
        self.assertEqual(
            evaluation.PRESETS,
            {
                "strong": STRONG,
                "fast": ("fgsm", "pgd", "square"),
                "autoattack": AUTOATTACK,
            },
        )
        self.assertEqual(
            evaluation.PLAIN_GRADIENT_ATTACKS,
            ("fgsm", "pgd", "pgd_cw", "apgd_ce", "apgd_dlr", "apgd_t", "fab_t"),
        )
        self.assertEqual(
            evaluation.ITERATIVE_ATTACKS,
            ("pgd", "pgd_cw", "apgd_ce", "apgd_dlr", "apgd_t", "fab_t"),
        )
        self.assertEqual(evaluation.BPDA_ATTACKS, ("bpda_identity", "bpda_smooth", *DERIVED_BPDA))
        self.assertEqual(registry.GRADIENT_FREE_ATTACKS, ("square",))
        self.assertEqual(registry.TRANSFER_ATTACKS, ("transfer",))
        doubling = evaluation.REGISTRY.names_where(lambda s: s.doubles)
        self.assertEqual(doubling, ("pgd", "pgd_cw", "bpda_identity"))

    @parameterized.named_parameters(
        ("fgsm", "fgsm", {"attack": "fgsm", "loss": "ce"}),
        (
            "pgd_cw",
            "pgd_cw",
            {
                "attack": "pgd",
                "num_steps": 100,
                "step_size": 0.0075,
                "restarts": 1,
                "random_start": True,
                "seed": 0,
                "loss": "margin",
            },
        ),
        ("apgd_ce", "apgd_ce", {"attack": "apgd", "num_steps": 100, "loss": "ce", "seed": 0}),
        (
            "square",
            "square",
            {"attack": "square", "max_queries": 1000, "p_init": 0.8, "seed": 0},
        ),
        (
            "transfer",
            "transfer",
            {
                "attack": "pgd",
                "num_steps": 100,
                "step_size": 0.0075,
                "restarts": 1,
                "random_start": True,
                "seed": 0,
                "loss": "ce",
                "crafted_on": "source model",
            },
        ),
        (
            "bpda_smooth",
            "bpda_smooth",
            {
                "attack": "pgd",
                "num_steps": 100,
                "step_size": 0.0075,
                "restarts": 1,
                "random_start": True,
                "seed": 0,
                "loss": "ce",
                "stand_in": "smooth",
                "smooth_alpha": 10.0,
            },
        ),
    )
    def test_recorded_settings_keep_their_layout(self, name, expected):
        settings = evaluation.attack_settings(name, 0.3, evaluation.AttackSettings())
        self.assertEqual(list(settings.items()), list(expected.items()))

    def test_entry_names_its_attack_function_and_model(self):
        spec = evaluation.REGISTRY["bpda_identity"]
        self.assertIs(spec.attack, attacks.pgd)
        self.assertEqual(spec.model, registry.ThroughStandIn("identity"))
        self.assertEqual(evaluation.REGISTRY["transfer"].model, registry.OnSource())
        self.assertTrue(evaluation.REGISTRY["square"].returns_queries)
        with self.assertRaisesRegex(ValueError, "Unknown attack 'nope'"):
            evaluation.attack_settings("nope", 0.3, evaluation.AttackSettings())

    def test_extended_registry_derives_presets_sets_and_help(self):
        extended = evaluation.REGISTRY.extended(TOY)
        self.assertNotIn("toy_grey", evaluation.REGISTRY)
        self.assertEqual(extended.names[-1], "toy_grey")
        self.assertEqual(evaluation.resolve_attacks(["strong"], registry=extended)[-1], "toy_grey")
        self.assertEqual(evaluation.resolve_attacks(["toy"], registry=extended), ["toy_grey"])
        self.assertEqual(
            extended.names_where(lambda s: s.kind == registry.GRADIENT_FREE),
            ("square", "toy_grey"),
        )
        self.assertIn("toy_grey or presets (strong (autoattack + ", extended.help())
        self.assertIn("), fast, toy, autoattack (", extended.help())
        self.assertEqual(
            evaluation.attack_settings("toy_grey", 0.3, None, registry=extended),
            {"attack": "shift_to_grey", "toward": 0.5},
        )
        with self.assertRaisesRegex(ValueError, "Unknown attack 'toy_grey'"):
            evaluation.resolve_attacks(["toy_grey"])

    def test_mapped_registry_changes_entries_and_keeps_presets(self):
        def rename_apgd(spec):
            if spec.attack is not attacks.apgd:
                return spec
            return dataclasses.replace(spec, kwargs=lambda eps, settings: {"changed": True})

        mapped = evaluation.REGISTRY.mapped(rename_apgd)
        self.assertEqual(mapped.names, evaluation.REGISTRY.names)
        self.assertEqual(mapped.presets, evaluation.REGISTRY.presets)
        self.assertEqual(mapped["apgd_ce"].kwargs(0.3, None), {"changed": True})
        self.assertEqual(mapped["bpda_identity:apgd_ce"].kwargs(0.3, None), {"changed": True})
        self.assertIs(mapped["pgd"], evaluation.REGISTRY["pgd"])
        self.assertNotIn("changed", evaluation.REGISTRY["apgd_ce"].kwargs(0.3, SETTINGS))

    def test_bpda_version_of_any_gradient_attack_is_one_derived_entry(self):
        apgd_bpda = registry.through_stand_in(
            evaluation.REGISTRY["apgd_ce"], "identity", name="bpda_apgd_ce"
        )
        extended = evaluation.REGISTRY.extended(apgd_bpda)
        self.assertEqual(
            extended.names_where(lambda s: s.bpda),
            ("bpda_identity", "bpda_smooth", *DERIVED_BPDA, "bpda_apgd_ce"),
        )
        self.assertNotIn("bpda_apgd_ce", extended.names_where(lambda s: s.plain_gradient))
        self.assertEqual(
            evaluation.attack_settings(
                "bpda_apgd_ce", 0.3, evaluation.AttackSettings(), registry=extended
            ),
            {"attack": "apgd", "num_steps": 100, "loss": "ce", "seed": 0, "stand_in": "identity"},
        )

    @parameterized.named_parameters(
        ("transfer_without_source", "transfer", dict(), "no source model given"),
        ("bpda_without_quantizer", "bpda_smooth", dict(), "no SoftQuantization layer"),
        (
            "bpda_on_saved_model",
            "bpda_identity",
            dict(has_quantizer=True),
            "needs the Keras model",
        ),
    )
    def test_skip_reasons_come_from_the_model_an_attack_runs_on(self, name, fields, reason):
        target = evaluation.Target(model_fn=None, path="x", **fields)
        self.assertIn(reason, evaluation.REGISTRY.skip_reason(name, target, None))
        self.assertIsNone(evaluation.REGISTRY.skip_reason("pgd", target, None))

    def test_unknown_kind_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "kind"):
            evaluation.AttackSpec("x", shift_to_grey, toy_kwargs, kind="physical")


def _target(has_quantizer, keras_model=True):
    return evaluation.Target(
        model_fn=None,
        path="x",
        keras_model=object() if keras_model else None,
        has_quantizer=has_quantizer,
    )


class BpdaNamingTest(parameterized.TestCase):
    def test_every_gradient_attack_has_a_bpda_version_per_stand_in(self):
        for stand_in in attacks.STAND_INS:
            for name in evaluation.PLAIN_GRADIENT_ATTACKS:
                bpda = evaluation.REGISTRY[evaluation.bpda_name(stand_in, name)]
                plain = evaluation.REGISTRY[name]
                self.assertEqual(bpda.model, registry.ThroughStandIn(stand_in))
                self.assertIs(bpda.attack, plain.attack)
                self.assertEqual(bpda.kwargs(0.3, SETTINGS), plain.kwargs(0.3, SETTINGS))

    def test_pgd_bpda_keeps_its_published_names_through_an_alias(self):
        self.assertEqual(
            evaluation.resolve_attacks(["bpda_identity:pgd", "bpda_smooth:pgd"]),
            ["bpda_identity", "bpda_smooth"],
        )
        self.assertEqual(evaluation.REGISTRY["bpda_smooth:pgd"].name, "bpda_smooth")
        self.assertIn("bpda_identity:pgd, bpda_smooth:pgd: aliases", evaluation.REGISTRY.help())

    def test_derived_entries_are_opt_in(self):
        for preset in ("strong", "fast"):
            self.assertNoCommonElements(evaluation.PRESETS[preset], DERIVED_BPDA)
        self.assertEqual(
            evaluation.resolve_attacks(["bpda_smooth:apgd_dlr", "fgsm"]),
            ["fgsm", "bpda_smooth:apgd_dlr"],
        )


class AutoAttackPresetTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("quantized", _target(True), BPDA_AUTOATTACK),
        ("plain", _target(False), list(AUTOATTACK)),
        ("quantized_saved_model", _target(True, keras_model=False), list(AUTOATTACK)),
        ("unknown_target", None, list(AUTOATTACK)),
    )
    def test_members_depend_on_the_model(self, target, expected):
        plan = evaluation.REGISTRY.plan(["autoattack"], SETTINGS, target=target)
        self.assertEqual(plan.attacks, expected)
        self.assertTrue(plan.worst_case_only)

    def test_members_run_in_the_declared_order(self):
        # Entries added later must keep AutoAttack's order (cheapest first).
        self.assertEqual(
            evaluation.resolve_attacks(["autoattack"]), list(registry.AUTOATTACK.members)
        )
        quantized = evaluation.resolve_attacks(["autoattack", "fgsm"], target=_target(True))
        self.assertEqual(quantized, ["fgsm", *BPDA_AUTOATTACK])

    def test_budgets_are_autoattacks_unless_given(self):
        plan = evaluation.REGISTRY.plan(["autoattack"], SETTINGS)
        self.assertEqual((plan.settings.square_queries, plan.settings.pgd_steps), (5000, 100))
        self.assertEqual(plan.settings.square_p_init, 0.8)
        given = evaluation.AttackSettings(square_queries=300, pgd_steps=7)
        plan = evaluation.REGISTRY.plan(["autoattack"], given, explicit=["square_queries"])
        self.assertEqual((plan.settings.square_queries, plan.settings.pgd_steps), (300, 100))

    def test_other_presets_keep_the_settings_and_the_per_attack_mode(self):
        plan = evaluation.REGISTRY.plan(["fast"], SETTINGS, target=_target(True))
        self.assertEqual(plan, evaluation.AttackPlan(["fgsm", "pgd", "square"], SETTINGS, False))
        self.assertTrue(evaluation.REGISTRY.plan(["fast"], SETTINGS, worst_case_only=True)[2])


class StrongPresetTest(parameterized.TestCase):
    def test_on_a_quantized_model_adds_autoattacks_bpda_members_to_plain_gradients(self):
        plan = evaluation.REGISTRY.plan(["strong"], SETTINGS, target=_target(True))
        # The plain gradient attacks stay, for the masking checks; AutoAttack's
        # gradient attacks run through the identity stand-in instead.
        expected = [
            "fgsm",
            "pgd",
            "pgd_cw",
            "apgd_ce",
            "bpda_identity:apgd_ce",
            "apgd_dlr",
            "bpda_identity:apgd_t",
            "bpda_identity:fab_t",
            "square",
            "transfer",
            "bpda_identity",
            "bpda_smooth",
        ]
        self.assertEqual(plan.attacks, expected)
        self.assertFalse(plan.worst_case_only)

    def test_on_a_plain_model_is_autoattack_plus_the_rest(self):
        plan = evaluation.REGISTRY.plan(["strong"], SETTINGS, target=_target(False))
        self.assertEqual(plan.attacks, list(STRONG))
        self.assertTrue(set(AUTOATTACK) <= set(plan.attacks))

    def test_budgets_are_autoattacks_with_pgd_restarts_unless_given(self):
        plan = evaluation.REGISTRY.plan(["strong"], SETTINGS)
        self.assertEqual(
            (plan.settings.pgd_steps, plan.settings.restarts, plan.settings.square_queries),
            (100, 5, 5000),
        )
        given = evaluation.AttackSettings(restarts=2, pgd_steps=7)
        plan = evaluation.REGISTRY.plan(["strong", "autoattack"], given, explicit=["restarts"])
        self.assertEqual((plan.settings.restarts, plan.settings.pgd_steps), (2, 100))
        self.assertTrue(plan.worst_case_only)

    def test_entries_naming_strong_join_it(self):
        extended = evaluation.REGISTRY.extended(TOY)
        self.assertIn("toy_grey", extended.presets["strong"])
        self.assertIn("toy_grey", extended.resolve(["strong"], target=_target(True)))

    def test_presets_that_disagree_on_a_default_are_refused(self):
        other = registry.Preset("other", ("square",), defaults=(("square_queries", 10),))
        extended = registry.Registry(
            list(evaluation.REGISTRY), presets=[registry.AUTOATTACK, other]
        )
        with self.assertRaisesRegex(ValueError, "autoattack, other disagree on square_queries"):
            extended.plan(["autoattack", "other"], SETTINGS)


if __name__ == "__main__":
    absltest.main()
