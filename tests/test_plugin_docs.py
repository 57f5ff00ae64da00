"""docs/plugins.md is the plugin author's page: it documents every hook foundry/hookspecs.py
declares, every contract a plugin implements, and the switches."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from foundry import hookspecs
from foundry.modality import Modality
from foundry.tokenizer import Tokenizer

DOC = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
HOOKS = sorted(name for name, fn in vars(hookspecs).items()
               if callable(fn) and hasattr(fn, "foundry_spec"))


def test_hookspecs_are_found():
    assert {"register_modalities", "register_presets", "register_commands"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_its_own_section(hook):
    assert re.search(rf"^#+ `{hook}\(", DOC, re.MULTILINE), f"docs/plugins.md has no section for the hook {hook}"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Modality)])
def test_every_modality_field_is_documented(field):
    assert f"| `{field}" in DOC, f"docs/plugins.md does not describe Modality.{field}"


@pytest.mark.parametrize("member", sorted(
    name for name in set(vars(Tokenizer)) | set(inspect.get_annotations(Tokenizer))
    if not name.startswith("_")))
def test_every_tokenizer_member_is_documented(member):
    assert f"`{member}" in DOC, f"docs/plugins.md does not describe Tokenizer.{member}"


def test_the_rest_of_the_contract_is_documented():
    for needle in ("save_hf", "import_tokenizer(path, source_format)", "`settings`", "Reader(name, suffixes, read",
                   "FOUNDRY_PLUGINS", "FOUNDRY_DISABLE_PLUGIN_AUTOLOAD", "foundry plugins new", "foundry.testing",
                   "## Objectives and tasks"):
        assert needle in DOC, needle
