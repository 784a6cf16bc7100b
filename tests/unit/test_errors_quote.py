"""hdetr.errors.quote / cap: values echoed in messages are capped and the rest is counted."""

from hdetr.errors import QUOTE_LIMIT, cap, quote


def test_short_values_are_quoted_whole():
    assert quote("resnet5") == "'resnet5'"
    assert quote([1, 2]) == "[1, 2]"


def test_long_values_are_capped_and_counted():
    text = quote("x" * 1_000_000)
    assert len(text) < QUOTE_LIMIT + 40
    assert text.startswith("'xxx") and text.endswith("... (999802 more characters)")


def test_cap_keeps_text_up_to_the_limit():
    assert cap("abc", 3) == "abc"
    assert cap("abcd", 3) == "abc... (1 more characters)"
