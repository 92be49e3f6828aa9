"""The registry: a lazy name -> ``module:Class`` table, "did you mean", and adding a method as
one file plus one table line (the README's checklist)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from harness.baselines import registry
from harness.baselines.registry import METHODS, build_stack, get
from harness.cli import main
from harness.models.backbones.random import build_random
from harness.models.method import MethodError


def test_every_entry_resolves_to_a_method_of_that_name():
    for name in METHODS:
        assert get(name).name == name


def test_unknown_name_suggests_the_closest():
    with pytest.raises(MethodError, match="unknown method 'fastvv': did you mean 'fastv'\\?"):
        get("fastvv")


def test_a_wrong_table_line_is_one_error(monkeypatch):
    monkeypatch.setitem(METHODS, "fastv2", "harness.baselines.fastv:FastV")
    with pytest.raises(MethodError, match="registry entry 'fastv2' points at .*whose name is 'fastv'"):
        get("fastv2")


NEW_METHOD = '''
"""Withdraw visual tokens from layer K on: a toy method for the registry test."""

from typing import ClassVar

from pydantic import Field

from harness.models.method import Method
from harness.models.plan import INVISIBLE, VisualPlan


class Withdraw(Method):
    name: ClassVar[str] = "withdraw"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = "visual tokens leave at layer K"
    k: int = Field(1, ge=0, description="layers that see visual tokens")

    def apply(self, plan: VisualPlan, backbone) -> VisualPlan:
        layers = [lp if i < self.k else INVISIBLE for i, lp in enumerate(plan.layers)]
        return VisualPlan(layers=tuple(layers))
'''


def test_adding_a_method_is_one_file_and_one_table_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_withdraw.py").write_text(textwrap.dedent(NEW_METHOD))  # the one file
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHODS, "withdraw", "my_withdraw:Withdraw")  # the one line
    monkeypatch.setattr(registry, "_LOADED", {})
    try:
        bb = build_random("llava-1.5")
        ours = build_stack("withdraw", {"withdraw": {"k": 2}}).plan(bb)
        vtw = build_stack("vtw", {"vtw": {"k": 2}}).plan(bb)
        assert ours.layers == vtw.layers and ours.name == "withdraw"
        assert build_stack("withdraw", {"withdraw": {"k": 2}}).params() == {"withdraw": {"k": 2}}
        with pytest.raises(
            MethodError, match="method 'withdraw': unknown parameter 'q'; known parameters: k"
        ):
            build_stack("withdraw", {"withdraw": {"q": 1}})
        assert main(["methods", "--json"]) == 0
        listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
        assert listed["withdraw"]["knobs"]["k"]["default"] == 1
    finally:
        sys.modules.pop("my_withdraw", None)
