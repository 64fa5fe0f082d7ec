"""One declaration per flag: the method flags come from their methods' declarations; the three
entry scripts share their common flags; each synthesizer's config holds only what it reads."""
import pytest
import yaml

import datafree_kd
import train_scratch
import vanilla_kd
from datafree.errors import UsageError
from datafree.synthesis import SYNTHESIZERS, BaseSynthesizer, register_synthesizer
from datafree.synthesis.flags import METHOD_FLAGS, method_flag
from datafree.utils.cli import parse_with_config
from datafree.run import registered_data, synthesizer_config
from test_datafree_kd import TINY

SHARED = ("dataset", "data_root", "download", "workers", "batch_size", "lr", "epochs", "momentum", "weight_decay",
          "config", "output", "resume", "evaluate_only", "start_epoch", "gpu", "seed", "print_freq", "log_tag",
          "dist_backend")


def actions(parser):
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def test_every_method_flag_reaches_the_command_line_as_declared():
    options = actions(datafree_kd.build_parser())
    for name, flag in METHOD_FLAGS.items():
        action = options[name]
        assert action.option_strings == [f"--{name}"] and action.default == flag.default and action.help == flag.help
        assert any(name in cls.flags for cls in SYNTHESIZERS.values()), f"--{name} is read by no method"
    assert set(datafree_kd.METHOD_FLAGS) == set(METHOD_FLAGS)


def test_the_scripts_share_one_declaration_of_their_common_flags():
    parsers = {"train_scratch": train_scratch.build_parser(), "vanilla_kd": vanilla_kd.build_parser(),
               "datafree_kd": datafree_kd.build_parser()}
    reference = actions(parsers["train_scratch"])
    for name, parser in parsers.items():
        options = actions(parser)
        for dest in SHARED:
            assert options[dest].option_strings == reference[dest].option_strings, (name, dest)
            if dest not in ("dataset", "lr", "epochs", "batch_size"):   # a script's own default, same flag
                assert options[dest].default == reference[dest].default, (name, dest)
    assert actions(parsers["datafree_kd"])["print_freq"].option_strings == ["-p", "--print_freq", "--print-freq"]


def test_every_script_reads_a_config_file_that_the_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"epochs": 3, "lr": 0.05, "dataset": "digits"}))
    args = parse_with_config(train_scratch.build_parser(), ["--config", str(path), "--lr", "0.2"])
    assert (args.epochs, args.lr, args.dataset) == (3, 0.2, "digits")
    path.write_text(yaml.safe_dump({"epochs": 3, "tv": 1.0}))
    with pytest.raises(UsageError, match="unknown keys tv"):
        parse_with_config(vanilla_kd.build_parser(), ["--config", str(path)])


def test_a_synthesis_config_holds_the_methods_flags_and_nothing_else(tmp_path):
    args = datafree_kd.parse_args(["--method", "deepinv", "--dataset", "digits", "--tv", "0.5", "--output", str(tmp_path)])
    config = synthesizer_config(args, registered_data(args, (3, 32, 32), train_size=100))
    assert config.tv == 0.5 and config.bn == 0.0 and config.num_classes == 10 and config.warmup == 0
    with pytest.raises(AttributeError, match="has no 'ssd_gamma'"):
        config.ssd_gamma
    with pytest.raises(AttributeError, match="has no 'lr'"):     # loop settings that are not facts stay out
        config.lr


def test_a_method_must_declare_the_flags_it_reads():
    class Reads(BaseSynthesizer):
        flags = frozenset({"adv", "no_such_flag"})

    with pytest.raises(ValueError, match="undeclared flags no_such_flag"):
        register_synthesizer("reads_undeclared")(Reads)
    assert "reads_undeclared" not in SYNTHESIZERS
    with pytest.raises(ValueError, match="already registered"):
        method_flag("adv", 0.0, "twice")


def test_print_freq_logs_the_kd_loss_every_n_rounds(teacher_file):
    datafree_kd.main(["--method", "fast_meta", *TINY, "--epochs", "1", "-p", "1"])
    log = open("checkpoints/datafree-fast_meta/digits-resnet8-resnet8/log.txt").read()
    assert log.count("[Train] epoch=0 round=") == 2      # ep_steps 4 / kd_steps 2 rounds
    assert "[Train] epoch=0 round=2/2 kd_loss=" in log


def test_help_groups_the_method_flags():
    parser = datafree_kd.build_parser()
    titles = [g.title for g in parser._action_groups]
    assert titles.index("data-free method") < titles.index("synthesis") < titles.index("run")
    terms = next(g for g in parser._action_groups if g.title == "data-free method")
    assert [a.dest for a in terms._group_actions][:4] == ["method", "adv", "bn", "oh"]


@pytest.mark.parametrize("argv, message", [
    (["--method", "deepinv", "--as_original", "nope"], "--as_original nope: unknown; choose from flips, deepinv_best"),
    (["--method", "fast_meta", "--as_original", "flips,deepinv_best"],
     "--as_original deepinv_best does not apply to method 'fast_meta' \\(it applies to: flips\\)"),
    (["--method", "dafl", "--as_original", "flips"], "--as_original is not used by method 'dafl'"),
])
def test_as_original_names_only_behaviours_the_method_has(argv, message):
    with pytest.raises(UsageError, match=message):
        datafree_kd.parse_args(argv)
    assert datafree_kd.parse_args(["--method", "deepinv", "--as_original", "flips, deepinv_best"]).method == "deepinv"
