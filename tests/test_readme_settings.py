"""The README's Configuration table is checked against taskkernel/settings.py: every setting is
documented, nothing that is not a setting is, and every default the table states is the code's."""

import dataclasses
import re
from pathlib import Path

from taskkernel.settings import PREFIX, Settings

README = Path(__file__).resolve().parent.parent / "README.md"
# defaults computed at run time, which the table describes in words
DESCRIBED = {"config_dir", "host_name", "max_feed_subscribers"}


def table_rows() -> dict[str, str]:
    """{setting name: the default the README states} from the Configuration table.

    A row may name several variables (`TASKKERNEL_API_HOST` / `_API_PORT`) with as many defaults
    separated by " / ", or one default for them all.
    """
    text = README.read_text()
    section = text[text.index("## Configuration"):]
    section = section[:section.index("\n#", 1)]
    rows = {}
    for line in section.splitlines():
        if not line.startswith(f"| `{PREFIX}"):
            continue
        variables, default = (cell.strip() for cell in line.split("|")[1:3])
        names = [suffix.lower() for suffix in re.findall(r"`(?:TASKKERNEL)?_([A-Z0-9_]+)`", variables)]
        defaults = default.split(" / ") if len(names) > 1 else [default]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"one default per variable, or one for all: {line}"
        rows.update(zip(names, (d.strip() for d in defaults)))
    return rows


def test_every_setting_is_in_the_table_and_only_settings_are():
    fields = {f.name for f in dataclasses.fields(Settings)}
    rows = table_rows()
    assert fields - set(rows) == set(), "settings the README does not document"
    assert set(rows) - fields == set(), "README rows that are not settings"


def test_every_stated_default_is_the_codes():
    defaults = {f.name: getattr(Settings(), f.name) for f in dataclasses.fields(Settings)}
    for name, stated in table_rows().items():
        code = defaults[name]
        first = stated.split()[0] if stated else ""
        if stated.startswith("("):  # "(none)", "(a fresh temporary directory)": the code leaves it empty
            assert code in ("", 0, 0.0), f"{name}: README says {stated!r}, the code says {code!r}"
        elif re.fullmatch(r"-?\d+(\.\d+)?", first):
            assert float(first) == float(code), f"{name}: README says {first}, the code says {code!r}"
        elif name not in DESCRIBED:
            assert first.strip("`") == str(code), f"{name}: README says {stated!r}, the code says {code!r}"
