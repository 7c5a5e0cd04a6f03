"""Tests for limsync.pipeline.tables: declaring pipeline tables as annotated classes."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any

import pydantic
import pytest
from example import Lab, Session, SessionStats, Subject, subject_row, subject_schema
from pydantic import Field

from limsync.errors import DeclarationError
from limsync.pipeline import (
    Computed,
    Imported,
    Key,
    Lookup,
    Manual,
    Part,
    Ref,
    Schema,
    TableSpec,
    Tier,
)
from limsync.pipeline.tables import MAX_IDENTIFIER, NO_DEFAULT, camel_to_snake, tables_in


@pytest.fixture
def schema() -> Schema:
    """A fresh schema, so classes declared by one test never clash with another's."""
    return Schema("decl")


# --- names and tiers ---------------------------------------------------------------------------


def test_tier_prefixes_and_part_names() -> None:
    assert Lab.spec.name == "#lab"
    assert Lab.spec.tier is Tier.LOOKUP
    assert Subject.spec.name == "subject"
    assert Subject.spec.tier is Tier.MANUAL
    assert SessionStats.spec.name == "__session_stats"
    assert SessionStats.spec.tier is Tier.COMPUTED
    assert Session.Probe.spec.name == "session__probe"
    assert Session.Probe.spec.tier is Tier.PART
    assert Session.Probe.__master__ is Session
    assert Session.Probe.spec.schema == "acquisition"  # inherited from the master
    assert Session.spec.qualname == "acquisition.session"
    assert subject_schema.tables == {"#lab": Lab, "subject": Subject}


def test_imported_tables_and_parts_of_every_tier(schema: Schema) -> None:
    class Rig(Lookup):
        __schema__ = schema
        rig_name: Annotated[str, Key]

        class Camera(Part):
            camera: Annotated[str, Key]

    class Recording(Imported):
        __schema__ = schema
        __references__ = (Ref(Rig, key=True),)
        n_frames: int

    class RigStats(Computed):
        __schema__ = schema
        __references__ = (Ref(Recording, key=True),)
        mean: float

        class Unit(Part):
            unit: Annotated[int, Key]

    assert Rig.Camera.spec.name == "#rig__camera"
    assert Recording.spec.name == "_recording"
    assert Recording.spec.tier is Tier.IMPORTED
    assert RigStats.Unit.spec.name == "__rig_stats__unit"
    assert RigStats.Unit.spec.primary_key == ("rig_name", "unit")
    assert Tier.IMPORTED.auto_populated and Tier.COMPUTED.auto_populated
    assert not Tier.MANUAL.auto_populated


def test_table_name_override_and_camel_case_rule(schema: Schema) -> None:
    class SubjectProject(Manual):
        __schema__ = schema
        __table_name__ = "subject_projects"
        project: Annotated[str, Key]

    assert SubjectProject.spec.name == "subject_projects"
    assert camel_to_snake("SessionStats") == "session_stats"
    assert camel_to_snake("Session2P") == "session2_p"


# --- columns, keys and references ---------------------------------------------------------------


def test_columns_keys_and_references_are_laid_out_as_datajoint_does() -> None:
    spec = Session.spec
    # primary references, then own key columns, then secondary references, then the rest
    assert spec.column_names[:3] == ("subject_uuid", "session_start", "lab_name")
    assert spec.primary_key == ("subject_uuid", "session_start")
    primary, secondary = spec.foreign_keys
    assert (primary.parent, primary.columns, primary.primary, primary.nullable) == (
        "subject.subject",
        ("subject_uuid",),
        True,
        False,
    )
    assert (secondary.parent, secondary.columns, secondary.primary, secondary.nullable) == (
        "subject.#lab",
        ("lab_name",),
        False,
        True,
    )
    lab_name = spec.column("lab_name")
    assert lab_name.nullable and lab_name.default is None and not lab_name.in_key
    inherited = spec.column("subject_uuid")
    assert inherited.type.kind == "uuid" and inherited.in_key
    assert inherited.comment == "LIMS id"  # the parent's comment travels with the column
    # The part's key is its master's key plus its own.
    assert Session.Probe.spec.primary_key == ("subject_uuid", "session_start", "probe_name")
    (to_master,) = Session.Probe.spec.foreign_keys
    assert to_master.parent == "acquisition.session" and to_master.primary


def test_column_defaults_comments_and_nullability() -> None:
    spec = Subject.spec
    assert spec.column("sex").default == "U"
    assert spec.column("birth_date").nullable and spec.column("birth_date").default is None
    assert spec.column("nickname").default is NO_DEFAULT and not spec.column("nickname").has_default
    assert spec.column("nickname").comment == "LIMS nickname"
    assert spec.column("weight").type.dj_type == "decimal(6,2)"
    assert spec.comment == "Experimental subject (synced from the LIMS)"
    assert Lab.spec.column("lab_name").comment == "short lab name"


def test_field_defaults_and_table_comment_edge_cases(schema: Schema) -> None:
    class Weighing(Manual):
        """

        Weighings, one per day.
        More text that is not the comment.
        """

        __schema__ = schema
        day: Annotated[dt.date, Key]
        grams: float = Field(default=20.0, description="body weight")

    class Undocumented(Manual):
        __schema__ = schema
        n: Annotated[int, Key]

    class BlankDoc(Manual):
        """ """

        __schema__ = schema
        n: Annotated[int, Key]

    assert Weighing.spec.comment == "Weighings, one per day."
    assert Weighing.spec.column("grams").default == 20.0
    assert Weighing.spec.column("grams").comment == "body weight"
    assert Undocumented.spec.comment == ""
    assert BlankDoc.spec.comment == ""


def test_a_diamond_adds_the_shared_column_once(schema: Schema) -> None:
    class Animal(Manual):
        __schema__ = schema
        animal: Annotated[int, Key]

    class Surgery(Manual):
        __schema__ = schema
        __references__ = (Ref(Animal, key=True),)
        surgery: Annotated[int, Key]

    class Implant(Manual):
        __schema__ = schema
        __references__ = (Ref(Animal, key=True), Ref(Surgery, key=True))
        implant: Annotated[int, Key]

    assert Implant.spec.column_names == ("animal", "surgery", "implant")
    assert [fk.parent for fk in Implant.spec.foreign_keys] == ["decl.animal", "decl.surgery"]


def test_row_model_validates_rows() -> None:
    row = Subject.Row.model_validate(subject_row(1, sex="F"))
    assert row.sex == "F"  # type: ignore[attr-defined]
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Subject.Row.model_validate({**subject_row(1), "colour": "brown"})
    with pytest.raises(pydantic.ValidationError, match="at most 64"):
        Subject.Row.model_validate(subject_row(1, nickname="x" * 65))
    with pytest.raises(pydantic.ValidationError):
        Subject.Row.model_validate(subject_row(1, weight=Decimal("12345.678")))
    # the default varchar(255) is enforced too, so it never reaches the database
    with pytest.raises(pydantic.ValidationError, match="at most 255"):
        Lab.Row.model_validate({"lab_name": "x", "institution": "y" * 256})
    # nullable reference: may be left out
    assert Session.Row.model_fields["lab_name"].default is None


def test_spec_helpers() -> None:
    spec = Subject.spec
    key = (uuid.UUID(int=5),)
    assert spec.key_of(subject_row(4)) == key
    assert spec.key_dict(key) == {"subject_uuid": uuid.UUID(int=5)}
    assert spec.has_column("nickname") and not spec.has_column("colour")
    with pytest.raises(KeyError, match=r"subject\.subject has no column 'colour'"):
        spec.column("colour")
    assert [s.name for s in tables_in([subject_schema, Session, SessionStats.spec])] == [
        "#lab",
        "subject",
        "session",
        "__session_stats",
    ]
    assert isinstance(Session.spec, TableSpec)


# --- declaration errors -------------------------------------------------------------------------


def test_schema_names_are_checked() -> None:
    with pytest.raises(DeclarationError, match="lower snake case"):
        Schema("Lab")
    with pytest.raises(DeclarationError, match="lower snake case"):
        Schema("x" * 49)
    with pytest.raises(DeclarationError, match="reserved"):
        Schema("limsync_state")


def test_a_table_needs_a_schema() -> None:
    with pytest.raises(DeclarationError, match="__schema__"):

        class Orphan(Manual):
            n: Annotated[int, Key]


def test_class_and_table_names_are_checked(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match="CamelCase"):

        class lower_case(Manual):
            __schema__ = schema
            n: Annotated[int, Key]

    with pytest.raises(DeclarationError, match="not lower snake case"):

        class Dashed(Manual):
            __schema__ = schema
            __table_name__ = "has-dash"
            n: Annotated[int, Key]

    with pytest.raises(DeclarationError, match=f"longer than {MAX_IDENTIFIER}"):

        class Long(Manual):
            __schema__ = schema
            __table_name__ = "a" * (MAX_IDENTIFIER + 1)
            n: Annotated[int, Key]


@pytest.mark.parametrize("name", ["Nickname", "_hidden", "a" * (MAX_IDENTIFIER + 1), "9lives"])
def test_column_names_are_checked(schema: Schema, name: str) -> None:
    with pytest.raises(DeclarationError, match="do not start with '_'"):
        type(
            "BadColumn",
            (Manual,),
            {"__schema__": schema, "__annotations__": {"n": Annotated[int, Key], name: int}},
        )


def test_a_table_needs_a_key(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match="needs a primary key"):

        class Keyless(Manual):
            __schema__ = schema
            value: int


def test_auto_populated_tables_take_their_key_from_references(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match=r"Computed tables take every primary-key column"):

        class OwnKey(Computed):
            __schema__ = schema
            __references__ = (Ref(Session, key=True),)
            unit: Annotated[int, Key]
            value: float

    with pytest.raises(DeclarationError, match=r"Imported tables take every primary-key column"):

        class OwnImport(Imported):
            __schema__ = schema
            n: Annotated[int, Key]


def test_unsupported_types_and_decimals_without_digits(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match="column 'value': no column type"):

        class Complex(Manual):
            __schema__ = schema
            n: Annotated[int, Key]
            value: complex

    with pytest.raises(DeclarationError, match="column 'price': Decimal columns need"):

        class Price(Manual):
            __schema__ = schema
            n: Annotated[int, Key]
            price: Decimal


def test_comments_must_not_start_with_a_colon(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match="table comment must not start with ':'"):

        class Colon(Manual):
            """:looks like a type"""

            __schema__ = schema
            n: Annotated[int, Key]

    with pytest.raises(DeclarationError, match="column comment must not start with ':'"):

        class ColonColumn(Manual):
            __schema__ = schema
            n: Annotated[int, Key, Field(description=":int32:")]


def test_keys_cannot_be_nullable(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match="primary-key column cannot be nullable"):

        class NullKey(Manual):
            __schema__ = schema
            n: Annotated[int, Key] | None

    with pytest.raises(DeclarationError, match="reference in the primary key cannot be nullable"):

        class NullRef(Manual):
            __schema__ = schema
            __references__ = (Ref(Lab, key=True, nullable=True),)
            n: Annotated[int, Key]


def test_a_column_cannot_clash_with_a_reference(schema: Schema) -> None:
    with pytest.raises(DeclarationError, match="'lab_name' is already added by a reference"):

        class Clash(Manual):
            __schema__ = schema
            __references__ = (Lab,)
            n: Annotated[int, Key]
            lab_name: str


def test_two_classes_cannot_share_a_table_name(schema: Schema) -> None:
    class Thing(Manual):
        __schema__ = schema
        n: Annotated[int, Key]

    def other() -> Any:
        class Thing(Manual):  # same name, different class (qualname differs)
            __schema__ = schema
            n: Annotated[int, Key]

        return Thing

    with pytest.raises(DeclarationError, match="already has a table 'thing'"):
        other()
    assert schema.tables["thing"] is Thing
