"""Suite YAML validation: one-line errors that name the key."""

import pytest

from harness.errors import HarnessError
from harness.suite import expand, load_suite

GOOD = """
name: t
backbones:
  - {name: a, model: "random:llava-1.5"}
methods: [dense]
scenarios:
  - {kind: verify, batch_size: 2}
"""


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


def test_good_suite_expands_to_cells(tmp_path):
    suite = load_suite(_write(tmp_path, GOOD))
    cells = expand(suite)
    assert [(c.backbone.name, c.method.name, c.task, c.scenario.kind) for c in cells] == [
        ("a", "dense", "none", "verify")
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (GOOD + "scenarioz: []\n", "unknown key 'scenarioz' at top level; allowed keys: name, description"),
        (
            GOOD.replace("batch_size: 2", "batch_size: 2, bacth: 1"),
            "unknown key 'bacth' at scenarios[0]; allowed keys: kind",
        ),
        (
            GOOD.replace("batch_size: 2", "batch_size: 0"),
            r"scenarios\[0\].batch_size: Input should be greater than or equal to 1",
        ),
        (GOOD.replace("kind: verify", "kind: speed"), "scenarios[0].kind: unknown scenario 'speed'"),
        (GOOD.replace("[dense]", "[warp]"), "methods[0]: unknown method 'warp'"),
        (GOOD.replace("name: t\n", ""), "missing required key 'name'"),
        (GOOD.replace("model:", "modle:"), "unknown key 'modle' at backbones[0]"),  # codespell:ignore modle
        (
            GOOD.replace('"random:llava-1.5"}', '"random:llava-1.5", reference: b}'),
            "backbones[0].reference: unknown backbone name 'b'; known: ['a']",
        ),
    ],
)
def test_bad_suites_fail_with_one_line_naming_the_key(tmp_path, edit, message):
    with pytest.raises(HarnessError) as err:
        load_suite(_write(tmp_path, edit))
    text = str(err.value)
    assert message in text or __import__("re").search(message, text), text
    assert "\n" not in text


def test_unknown_suite_name_lists_bundled_suites():
    with pytest.raises(HarnessError, match="unknown suite 'nope': give a YAML file or one of: .*smoke"):
        load_suite("nope")


def test_bundled_suites_validate():
    from harness.suite import SUITES_DIR

    for path in SUITES_DIR.glob("*.yaml"):
        assert expand(load_suite(str(path)))


def test_reference_key_only_in_the_fingerprint_when_set(tmp_path):
    plain = expand(load_suite(_write(tmp_path, GOOD)))[0].spec()["backbone"]
    assert "reference" not in plain  # suites without it keep their committed records' fingerprints
    two = GOOD.replace(
        '- {name: a, model: "random:llava-1.5"}',
        '- {name: a, model: "random:llava-1.5"}\n  - {name: b, model: "random:llava-1.5", reference: a}',
    )
    specs = {c.backbone.name: c.spec()["backbone"] for c in expand(load_suite(_write(tmp_path, two)))}
    assert specs["b"]["reference"] == "a" and "reference" not in specs["a"]
