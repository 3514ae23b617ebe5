"""Completion runs jedi on the notebook's live namespace."""

import pytest

from taskkernel.client import ApiError

pytestmark = pytest.mark.timeout(60)


def test_completes_attributes_of_imported_modules(notebook):
    notebook.evaluate("import math")
    reply = notebook.complete("math.sq")
    assert "sqrt" in reply["matches"]
    assert reply["cursor_start"] == len("math.") and reply["cursor_end"] == len("math.sq")


def test_offers_names_the_notebook_defined(notebook):
    notebook.evaluate("my_special_value = 3\nclass Thing:\n    colour = 'red'\nthing = Thing()")
    assert "my_special_value" in notebook.complete("my_spec")["matches"]
    assert "colour" in notebook.complete("thing.col")["matches"]


def test_cursor_in_the_middle_of_the_code(notebook):
    notebook.evaluate("import math")
    code = "math.fl + 1"
    reply = notebook.complete(code, cursor_pos=7)
    assert "floor" in reply["matches"] and reply["cursor_end"] == 7


def test_a_cursor_outside_the_code_is_a_400(notebook):
    with pytest.raises(ApiError) as info:
        notebook.complete("abc", cursor_pos=10)
    assert info.value.status == 400 and info.value.code == "invalid_field"
