"""Per-endpoint filter parameters of the fake Alyx, as django-filter applies them.

Model fields are exact matches validated like django-filter's form fields (a bad value is a
400); Alyx adds custom filters (``alive``, ``lab`` by name, ``users``, ``date_range``...).
Parameters an endpoint does not know are silently ignored, so a typo returns everything; on
endpoints without a filterset (projects, procedures, water types) even ``django`` is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from limsync.testing.alyx.lookups import (
    Cond,
    QueryError,
    Test,
    cannot_resolve,
    compile_lookup,
    convert_value,
    invalid_value,
    parse_django,
)
from limsync.testing.alyx.store import Query

if TYPE_CHECKING:
    from limsync.testing.alyx.store import Store

__all__ = ["FILTERS", "build_query"]

FilterFn = Callable[["Store", str, str, str], Cond | None]
"""``(store, kind, parameter name, value) -> condition``, or None to apply no filter."""


def _text(path: str, op: str = "exact") -> FilterFn:
    """A CharFilter on ``path``; an empty value applies no filter (django-filter's rule)."""

    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        return compile_lookup(colony, kind, f"{path}__{op}", value) if value else None

    return build


def _form(path: str, ftype: str, message: str) -> FilterFn:
    """An exact filter whose value must parse as ``ftype`` (else 400 ``message``)."""

    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        if not value:
            return None
        try:
            parsed: Any = float(value) if ftype == "float" else convert_value(ftype, value, name)
        except (QueryError, ValueError):
            raise invalid_value(name, message) from None
        return compile_lookup(colony, kind, path, parsed)

    return build


def _uuid(path: str) -> FilterFn:
    return _form(path, "uuid", "Enter a valid UUID.")


def _date(path: str) -> FilterFn:
    return _form(path, "date", "Enter a valid date.")


def _datetime(path: str) -> FilterFn:
    return _form(path, "datetime", "Enter a valid date/time.")


def _number(path: str) -> FilterFn:
    return _form(path, "float", "Enter a number.")


def _choice(path: str, target: str | None, many: bool = False) -> FilterFn:
    """A (multiple) model choice filter: the value must be the id of an existing record; the
    fake keeps no table for some targets (species, strain...), so any value is invalid there."""

    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        if not value:
            return None
        if target is None or value not in colony.table(target):
            what = f"{value} is not" if many else "That choice is not"
            raise invalid_value(
                name, f"Select a valid choice. {what} one of the available choices."
            )
        return compile_lookup(colony, kind, path, value)

    return build


def _boolean(make: Callable[[Store, bool], Test]) -> FilterFn:
    """A BooleanFilter: true/True/1 or false/False/0; anything else applies no filter."""

    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        if value in ("true", "True", "1"):
            return make(colony, True), None
        if value in ("false", "False", "0"):
            return make(colony, False), None
        return None

    return build


def _field(path: str) -> FilterFn:
    return _boolean(lambda colony, wanted: lambda r: getattr(r, path, False) is wanted)


def _nothing(colony: Store, kind: str, name: str, value: str) -> Cond | None:
    """A filter on data the fake never has (datasets, histology...): nothing matches."""
    return ((lambda record: False), None) if value else None


def _missing(field_name: str) -> FilterFn:
    """A declared filter on a field the model lacks: the real server fails with a 500."""

    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        raise cannot_resolve(kind, field_name)

    return build


def _date_range(path: str) -> FilterFn:
    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        return compile_lookup(colony, kind, f"{path}__date__range", value.split(","))

    return build


def _users_all(colony: Store, kind: str, name: str, value: str) -> Cond | None:
    """``users=alice,bob``: records with every one of these users."""
    wanted = [u for u in value.split(",") if u]
    users = colony.table("user")

    def test(record: Any) -> bool:
        names = {users[i].username for i in record.users}
        return all(u in names for u in wanted)

    return (test, None) if wanted else None


def _users_any(colony: Store, kind: str, name: str, value: str) -> Cond | None:
    return compile_lookup(colony, kind, "user__username__in", value.split(",")) if value else None


_QC_CODES = {"0": "NOT_SET", "10": "PASS", "30": "WARNING", "40": "FAIL", "50": "CRITICAL"}


def _qc(colony: Store, kind: str, name: str, value: str) -> Cond | None:
    wanted = _QC_CODES.get(value, value.upper())
    return ((lambda session: session.qc == wanted), None) if value else None


def _performance(op: str) -> FilterFn:
    """``performance_gte``/``_lte``: 100 * correct trials / trials."""

    def build(colony: Store, kind: str, name: str, value: str) -> Cond | None:
        try:
            bound = float(value)
        except ValueError:
            raise invalid_value(name, "Enter a number.") from None

        def test(session: Any) -> bool:
            if not session.n_trials or session.n_correct_trials is None:
                return False
            score: float = 100 * session.n_correct_trials / session.n_trials
            return score >= bound if op == "gte" else score <= bound

        return test, None

    return build


def _alive(colony: Store, wanted: bool) -> Test:
    return lambda subject: (subject.death_date is None) is wanted


def _stock(colony: Store, wanted: bool) -> Test:
    users = colony.table("user")
    return lambda subject: users[subject.responsible_user].is_stock_manager is wanted


def _water_restricted(colony: Store, wanted: bool) -> Test:
    def test(subject: Any) -> bool:
        open_ = any(r.end_time is None for r in colony.children("waterrestriction", subject.id))
        return open_ is wanted

    return test


_NICKNAME = _text("subject__nickname", "iexact")
_ACTION_COMMON: dict[str, FilterFn] = {
    "subject": _NICKNAME,
    "nickname": _NICKNAME,
    "lab": _text("subject__lab__name"),
    "id": _uuid("id"),
    "date_time": _datetime("date_time"),
    "user": _choice("user", "user"),
    "users": _users_any,
    # BaseActionFilter's date_range filters on start_time, which these models lack (a 500).
    "date_range": _missing("start_time"),
    "location": _missing("location"),
}

FILTERS: dict[str, dict[str, FilterFn]] = {
    "subject": {
        "alive": _boolean(_alive),
        "stock": _boolean(_stock),
        "water_restricted": _boolean(_water_restricted),
        "lab": _text("lab__name"),
        "responsible_user": _text("responsible_user__username"),
        "project": _text("projects__name"),
        "projects": _choice("projects", "project", many=True),
        "nickname": _text("nickname"),
        "id": _uuid("id"),
        **{n: _date(n) for n in ("birth_date", "death_date", "wean_date", "genotype_date")},
        "reduced_date": _date("reduced_date"),
        **{
            n: _text(n)
            for n in ("sex", "description", "cage", "ear_mark", "adverse_effects", "name")
        },
        "protocol_number": _text("protocol_number"),
        "actual_severity": _text("actual_severity"),
        **{n: _choice(n, None) for n in ("species", "litter", "strain", "source", "line")},
        "request": _choice("request", None),
        "genotype": _choice("genotype", None, many=True),
        "genotype_test": _choice("genotype_test", None, many=True),
        "to_be_culled": _field("to_be_culled"),
        "to_be_genotyped": _field("to_be_genotyped"),
    },
    "session": {
        "subject": _NICKNAME,
        "nickname": _NICKNAME,
        "users": _users_all,
        "date_range": _date_range("start_time"),
        "lab": _text("lab__name"),
        "location": _text("location__name"),
        "task_protocol": _text("task_protocol", "icontains"),
        "projects": _text("projects__name", "icontains"),
        "project": _text("projects__name", "icontains"),
        "procedures": _text("procedures__name", "icontains"),
        "type": _text("type"),
        "qc": _qc,
        "narrative": _text("narrative"),
        "name": _text("name"),
        **{n: _number(n) for n in ("number", "n_trials", "n_correct_trials")},
        **{n: _datetime(n) for n in ("start_time", "end_time", "auto_datetime")},
        "id": _uuid("id"),
        "parent_session": _choice("parent_session", "session"),
        "performance_gte": _performance("gte"),
        "performance_lte": _performance("lte"),
        **{
            n: _nothing
            for n in (
                "dataset_types",
                "datasets",
                "tag",
                "dataset_qc_lte",
                "atlas_acronym",
                "atlas_id",
                "atlas_name",
            )
        },
        "histology": _boolean(lambda colony, wanted: lambda session: not wanted),
    },
    "weighing": {**_ACTION_COMMON, "weight": _number("weight"), "name": _missing("name")},
    "wateradmin": {
        **_ACTION_COMMON,
        "adlib": _field("adlib"),
        "session": _choice("session", "session"),
        "water_administered": _number("water_administered"),
        "water_type": _choice("water_type", "watertype"),
        "name": _nothing,
    },
    "surgery": {
        "subject": _NICKNAME,
        "nickname": _NICKNAME,
        "lab": _text("lab__name"),
        "users": _users_all,
        "location": _text("location__name"),
        "date_range": _date_range("start_time"),
        "procedure": _text("procedures__name", "icontains"),
        "procedures": _choice("procedures", "procedure", many=True),
        "outcome_type": _text("outcome_type"),
        "implant_weight": _number("implant_weight"),
        **{n: _datetime(n) for n in ("start_time", "end_time")},
        **{n: _text(n) for n in ("narrative", "name")},
        "id": _uuid("id"),
    },
    "waterrestriction": {
        "subject": _NICKNAME,
        "nickname": _NICKNAME,
        "lab": _text("subject__lab__name"),
        "date_range": _date_range("start_time"),
        **{n: _datetime(n) for n in ("start_time", "end_time")},
        "reference_weight": _number("reference_weight"),
        "water_type": _choice("water_type", "watertype"),
        "narrative": _text("narrative"),
        "id": _uuid("id"),
        **{n: _nothing for n in ("users", "location", "procedures", "name")},
    },
    "user": {
        **{n: _text(n) for n in ("username", "email", "first_name", "last_name")},
        "id": _uuid("id"),
        "is_stock_manager": _field("is_stock_manager"),
        "allowed_users": _choice("allowed_users", "user", many=True),
    },
    "lab": {
        **{n: _text(n) for n in ("name", "institution", "address", "timezone")},
        "id": _uuid("id"),
        **{n: _number(n) for n in ("reference_weight_pct", "zscore_weight_pct")},
    },
}
"""Filter parameters per kind. Kinds absent here (projects, procedures, water types) have no
filterset at all upstream: every parameter, ``django`` included, is ignored."""


def build_query(colony: Store, kind: str, params: dict[str, list[str]]) -> Query:
    """The query for one list request (``params`` as parsed from the query string).

    Raises :class:`QueryError` for what the real server refuses (400 bad value, 500 bad lookup).
    """
    spec = FILTERS.get(kind)
    conditions: list[Cond] = []
    used: list[tuple[str, str]] = []
    if spec is not None:
        for name, values in sorted(params.items()):
            value = values[-1]
            if name == "django" and value:
                for lookup, val in parse_django(value):
                    conditions.append(compile_lookup(colony, kind, lookup, val))
            elif name in spec:
                condition = spec[name](colony, kind, name, value)
                if condition is not None:
                    conditions.append(condition)
            else:
                continue  # unknown parameters are ignored, like django-filter does
            used.append((name, value))
    hint = next((h for _, h in conditions if h is not None), None)
    return Query(kind, tuple(test for test, _ in conditions), hint, tuple(used))
