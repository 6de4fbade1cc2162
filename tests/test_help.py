"""Help a newcomer can trust: every option of every subcommand says what it does, every setting the
code reads has a row in a table of the docs, and the README is short, starts with the two
commands and links only to what exists."""

import argparse
import re
from pathlib import Path

from shared.ops.engine_settings import ChatSettings, SDXLSettings, WANSettings
from shared.ops.settings import Settings
from workers.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _parsers(parser: argparse.ArgumentParser, path=("ourvidz-worker",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_of_every_subcommand_has_a_help_line():
    missing = [f"{' '.join(path)} {action.option_strings or action.dest}"
               for path, parser in _parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert not missing, missing
    commands = {" ".join(path) for path, _ in _parsers(build_parser())}
    assert {"ourvidz-worker bench chat", "ourvidz-worker bench sdxl", "ourvidz-worker bench wan",
            "ourvidz-worker bench fleet"} <= commands  # each benchmark shows its own flags


def test_submit_and_make_tiny_model_list_their_choices(capsys):
    subcommands = dict((path[-1], parser) for path, parser in _parsers(build_parser()))
    submit_help = subcommands["submit"].format_help()
    assert "sdxl_image_fast" in submit_help and "video7b_high_enhanced" in submit_help
    tiny_help = subcommands["make-tiny-model"].format_help()
    assert all(name in tiny_help for name in ("sdxl", "wan-vace", "chat"))


def test_every_setting_the_code_reads_is_documented():
    names = set()
    for cls, prefix in ((Settings, ""), (SDXLSettings, "SDXL_"), (WANSettings, "WAN_"), (ChatSettings, "")):
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if alias is None:
                names.add(prefix + field_name.upper())
            elif isinstance(alias, str):
                names.add(alias)
            else:
                names.update(choice for choice in alias.choices if isinstance(choice, str))
    names = {n for n in names if not n.startswith("OURVIDZ_")}  # the nested trees, not variables
    names |= {"ENGINE", "RUNPOD_POD_ID", "MODEL_PATH", "DEVICE", "MODELS_DIR"}  # read from the environment directly
    rows = set()  # `NAME` in the first cell of a table row of any page of the docs
    for page in DOCS:
        for line in page.read_text().splitlines():
            if line.startswith("|"):
                rows.update(re.findall(r"`([A-Z][A-Z0-9_]+)[`=]", line.split("|")[1]))
    assert names - rows == set()


def test_the_readme_is_short_and_starts_with_the_two_commands():
    assert len(README.encode()) <= 25 * 1024
    head = "\n".join(README.splitlines()[:60])
    assert "bash scripts/demo.sh" in head and "bash .ci/run" in head


def test_every_local_link_in_the_readme_and_the_docs_resolves():
    checked = 0
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: {target}"
            if anchor:
                slugs = {re.sub(r"[^\w\- ]", "", h.strip("# ").lower()).replace(" ", "-")
                         for h in file.read_text().splitlines() if h.startswith("#")}
                assert anchor in slugs, f"{page.name}: {target}"
            checked += 1
    assert checked >= 7  # the README's map of the docs at least


def test_benchmarks_take_their_sizes_from_the_device_unless_given():
    from workers.cli.bench_options import fill_device_defaults

    def parsed(*argv):
        args = build_parser().parse_args(["bench", *argv])
        fill_device_defaults(args)
        return args

    cpu, gpu = parsed("sdxl", "--model", "m", "--device", "cpu"), parsed("sdxl", "--model", "m", "--device", "cuda:0")
    assert (cpu.size, cpu.steps, cpu.jobs, cpu.batch) == (256, 8, 2, 2)
    assert (gpu.size, gpu.steps, gpu.jobs, gpu.batch) == (1024, 25, 6, 6)
    assert parsed("sdxl", "--model", "m", "--device", "cpu", "--size", "512").size == 512  # given: kept
    wan = parsed("wan", "--model", "m", "--device", "cpu")
    assert (wan.size, wan.frames, wan.steps) == ("128x128", 9, 4)
    assert parsed("chat", "--model", "m", "--device", "cpu").concurrency == "4,8"
