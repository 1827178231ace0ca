"""The chart README's Parameters table is what Bitnami's readme-generator-for-helm makes of
the `## @param` comments in values.yaml: regenerated into a copy, it must not change.

The tool is an npm package that `tests/run` installs (tests/chart/readme-generator); where
it is missing the test is skipped, or fails with `CI` / `CHATBOT_REQUIRE_NODE_TOOLS=1`.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess

import pytest
import yaml

from tests.kube.helm import CHART, ROOT
from tests.support.requirements import unavailable

SCRIPT = ROOT / "tests/chart/readme-generator"
README = CHART / "README.md"
REGENERATE = "tests/chart/readme-generator"


@pytest.fixture(scope="module")
def generator() -> str:
    where = subprocess.run([SCRIPT, "--where"], capture_output=True, text=True)
    if where.returncode != 0:
        unavailable(f"readme-generator-for-helm is not installed ({where.stdout.strip()}): "
                    f"`{REGENERATE} --install` installs it with npm",
                    "CHATBOT_REQUIRE_NODE_TOOLS")
    return where.stdout.strip()


def _regenerated(generator: str, tmp_path, values: str, readme: str) -> str:
    (tmp_path / "values.yaml").write_text(values)
    (tmp_path / "README.md").write_text(readme)
    run = subprocess.run([generator, "--values", tmp_path / "values.yaml",
                          "--readme", tmp_path / "README.md"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, (
        "readme-generator refused values.yaml (every value needs a `## @param` comment, see "
        f"its ERROR lines); fix it, then run `{REGENERATE}`:\n{run.stdout}{run.stderr}")
    return (tmp_path / "README.md").read_text()


def test_chart_readme_parameters_match_values_yaml(generator, tmp_path):
    committed = README.read_text()
    fresh = _regenerated(generator, tmp_path, (CHART / "values.yaml").read_text(), committed)
    diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                        "charts/chatbot/README.md", "regenerated"))
    assert not diff, (f"charts/chatbot/README.md is stale; regenerate it with "
                      f"`{REGENERATE}` and commit the result:\n{diff}")


def test_every_value_has_a_row():
    """Every leaf of values.yaml (or the object that holds it) is named in the table."""
    table = README.read_text().split("## Parameters", 1)[1]

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix.rstrip(".")

    missing = [key for key in leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
               if f"`{key}`" not in table]
    assert not missing, f"values without a row in the chart README: {missing}"


def test_a_value_without_a_param_comment_is_refused(generator, tmp_path):
    """The check can fail: a value added without its `## @param` line stops the generator."""
    values = (CHART / "values.yaml").read_text() + "\nundocumented: 1\n"
    shutil.copy(README, tmp_path / "README.md")
    (tmp_path / "values.yaml").write_text(values)
    run = subprocess.run([generator, "--values", tmp_path / "values.yaml",
                          "--readme", tmp_path / "README.md"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "undocumented" in run.stdout + run.stderr


def test_a_changed_description_makes_the_table_stale(generator, tmp_path):
    """The comparison above can fail: a new description in values.yaml changes the table."""
    values = (CHART / "values.yaml").read_text()
    old = "## @param tests.timeoutSeconds Its timeout per request (seconds)"
    assert old in values
    fresh = _regenerated(generator, tmp_path, values.replace(old, old + ", for each persona"),
                         README.read_text())
    assert fresh != README.read_text()
    assert "Its timeout per request (seconds), for each persona" in fresh
