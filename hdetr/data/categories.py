"""Model <-> dataset categories compared by id and by name, at every entry point (train with a val split,
--resume, eval): a model scored or trained on categories it does not know gives meaningless numbers."""

from __future__ import annotations

from ..errors import UserError, quote


def category_differences(expected, found) -> list[str]:
    """What differs between two CategoryMaps (``expected``: the model's or the training split's)."""
    want = dict(zip(expected.cat_ids, expected.cat_names))
    have = dict(zip(found.cat_ids, found.cat_names))
    out = [f"id {i} is {quote(want[i])} there but {quote(have[i])} here" for i in sorted(set(want) & set(have))
           if want[i] != have[i]]
    out += [f"id {i} ({quote(have[i])}) is unknown there" for i in sorted(set(have) - set(want))]
    out += [f"id {i} ({quote(want[i])}) is missing here" for i in sorted(set(want) - set(have))]
    return out


def same_categories(expected, found, expected_source: str, found_source: str) -> None:
    """Raise a UserError naming both sources and up to 5 differences, unless the categories agree."""
    diff = category_differences(expected, found)
    if diff:
        more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
        raise UserError(f"the categories of {found_source} (here) differ from those of {expected_source} (there): "
                        f"{'; '.join(diff[:5])}{more}")
