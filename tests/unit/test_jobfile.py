"""Job files: the bundled job loads, and every mistake is a ConfigError naming its TOML path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.errors import ConfigError, IdentifierError
from engine.jobfile import DatabaseConfig, list_bundled_jobs, load_job
from engine.settings import EngineSettings

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "email": {"type": ["string", "null"]},
        "age": {"type": ["integer", "null"]},
        "skills": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"city": {"type": ["string", "null"]}},
            "required": ["city"],
        },
    },
    "required": ["email", "age", "skills", "address"],
}

BASE = """\
name = "people"
model = "gpt-4o-mini"
endpoint = "/v1/chat/completions"

[source]
table = "dbo.people"
key_column = "id"
text_columns = ["bio", "notes"]
processed_column = "Done"

[prompt]
system = "Extract."
user = "{bio}\\n\\n{notes}"

[output]
schema_name = "person"
schema_file = "person.json"

[[columns]]
field = "email"
column = "Email"
max_length = 320

[[columns]]
field = "age"
column = "Age"
kind = "int"

[[columns]]
field = "skills"
column = "Skills"
kind = "json"

[[columns]]
field = "address.city"
column = "City"
kind = "text"

[engine]
batch_size = 200
max_in_flight = 2
check_interval_s = 30
"""


def write_job(tmp_path: Path, text: str = BASE, schema: object = SCHEMA) -> Path:
    (tmp_path / "person.json").write_text(json.dumps(schema), encoding="utf-8")
    path = tmp_path / "people.toml"
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_valid_job_file_loads(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path))
    spec = job.spec
    assert spec.name == "people"
    assert spec.source.table == "dbo.people"
    assert spec.source.text_columns == ("bio", "notes")
    assert spec.schema_name == "person"
    assert spec.output_schema == SCHEMA
    assert [(c.field, c.column, c.kind, c.max_length) for c in spec.columns] == [
        ("email", "Email", "text", 320), ("age", "Age", "int", None),
        ("skills", "Skills", "json", None), ("address.city", "City", "text", None),
    ]
    assert job.engine == {"batch_size": 200, "max_in_flight": 2, "check_interval_s": 30.0}
    assert job.database is None
    settings = job.engine_settings(batch_size=50, max_in_flight=None)
    assert isinstance(settings, EngineSettings)
    assert (settings.batch_size, settings.max_in_flight) == (50, 2)
    with pytest.raises(ConfigError, match=r"^batch_sise: not an engine setting"):
        job.engine_settings(batch_sise=5)


def test_relative_path_uses_base_dir(tmp_path: Path) -> None:
    write_job(tmp_path)
    assert load_job("people.toml", base_dir=tmp_path).spec.name == "people"


def test_inline_schema_table(tmp_path: Path) -> None:
    text = edited('schema_file = "person.json"', "").replace(
        "[[columns]]",
        "[output.schema]\ntype = \"object\"\nadditionalProperties = false\n"
        "required = [\"email\"]\n[output.schema.properties.email]\ntype = [\"string\", \"null\"]\n"
        "\n[[columns]]",
        1,
    )
    # only the email column fits this smaller schema
    text = text[: text.index("[[columns]]\nfield = \"age\"")] + text[text.index("[engine]"):]
    job = load_job(write_job(tmp_path, text))
    assert job.spec.output_schema is not None
    assert list(job.spec.output_schema["properties"]) == ["email"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('table = "dbo.people"\n', "", "source.table: required"),
        ('kind = "int"', 'kind = "txt"',
         "columns[1].kind: 'txt' is not one of text, int, float, bool, json"),
        ('model = "gpt-4o-mini"', 'modle = "gpt-4o-mini"',
         "modle: unknown key (did you mean 'model'?)"),
        ("max_length = 320", "max_len = 320", "columns[0].max_len: unknown key"),
        ("batch_size = 200", "batch_sise = 200", "engine.batch_sise: unknown key"),
        ('endpoint = "/v1/chat/completions"', 'endpoint = "/v1/chat"',
         "endpoint: '/v1/chat' is not one of /v1/chat/completions"),
        ('schema_file = "person.json"', 'schema_file = "nope.json"',
         "output.schema_file: 'nope.json' not found"),
        ('user = "{bio}\\n\\n{notes}"', 'user = "{bio} {resume_text}"',
         "prompt.user: placeholder {resume_text} is not one of source.text_columns"),
        ('user = "{bio}\\n\\n{notes}"', 'user = "{bio"', "prompt.user: not a valid template"),
        ('field = "email"', 'field = "emial"', "columns[0].field: 'emial' is not a property"),
        ('field = "address.city"', 'field = "address.town"', "columns[3].field:"),
        ('column = "Skills"\nkind = "json"', 'column = "Skills"\nkind = "text"',
         "columns[2].kind: 'skills' is an array or object"),
        ('column = "Age"', 'column = "Email"', "columns[1].column: 'Email' is already used"),
        ('column = "Age"', 'column = "Done"', "columns[1].column: 'Done' is the key or the"),
        ("batch_size = 200", "batch_size = 0", "engine.batch_size: must be 1..50000"),
        ("batch_size = 200", 'batch_size = "big"', "engine.batch_size: expected an integer"),
        ("max_length = 320", "max_length = -1", "columns[0].max_length: must be >= 1"),
        ('key_column = "id"', "key_column = 7", "source.key_column: expected a string"),
        ('text_columns = ["bio", "notes"]', "text_columns = []", "source.text_columns:"),
        ('processed_column = "Done"\n', 'processed_column = "Done"\nkey_type = "uuid"\n',
         "source.key_type: 'uuid' is not one of int, str"),
        ('name = "people"', 'name = "has space"', "name: 'has space'"),
        ("[engine]", "[engine]\nworker_id = \"x\"", "engine.worker_id: unknown key"),
        ("[engine]", "[pricing]\ninput = \"cheap\"\n\n[engine]",
         "pricing.input: expected a number"),
        ("[engine]", "[database]\ndsn = \"Driver=SQLite3\"\nserver = \"x\"\n\n[engine]",
         "database.server: give either dsn or its parts"),
        ("[engine]", "[database]\nserver = \"x\"\n\n[engine]", "database.dsn: required"),
        ("[engine]", "[database]\ndsn = \"x\"\ndialect = \"oracle\"\n\n[engine]",
         "database.dialect: 'oracle' is not one of"),
        ("[engine]", "[database]\ndriver = \"x\"\npassword_env = \"hunter 2\"\n\n[engine]",
         "database.password_env: the NAME of an environment variable"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_job(write_job(tmp_path, edited(old, new)))
    assert str(info.value).startswith(message.split(":")[0] + ":"), str(info.value)
    assert message in str(info.value)


def test_bad_identifier_is_an_identifier_error(tmp_path: Path) -> None:
    with pytest.raises(IdentifierError, match=r"^source\.table: 'people; DROP TABLE x'"):
        load_job(write_job(tmp_path, edited('"dbo.people"', '"people; DROP TABLE x"')))
    with pytest.raises(IdentifierError, match=r"^columns\[0\]\.column:"):
        load_job(write_job(tmp_path, edited('column = "Email"', 'column = "E mail"')))


def test_schema_must_be_strict(tmp_path: Path) -> None:
    loose = json.loads(json.dumps(SCHEMA))
    del loose["properties"]["address"]["additionalProperties"]
    with pytest.raises(ConfigError, match=r"properties\.address: additionalProperties must be"):
        load_job(write_job(tmp_path, schema=loose))
    loose = json.loads(json.dumps(SCHEMA))
    loose["required"].remove("age")
    with pytest.raises(ConfigError, match=r"every property must be required \(missing age\)"):
        load_job(write_job(tmp_path, schema=loose))
    # an explicit opt-out loads it
    text = edited('schema_name = "person"', 'schema_name = "person"\nstrict = false')
    assert load_job(write_job(tmp_path, text, schema=loose)).spec.output_schema == loose


def test_schema_file_errors(tmp_path: Path) -> None:
    path = write_job(tmp_path)
    (tmp_path / "person.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^output\.schema_file: 'person\.json' is not JSON"):
        load_job(path)
    (tmp_path / "person.json").write_text('{"type": "object", "properties": 3}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^output\.schema_file \(person\.json\): not a valid"):
        load_job(path)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_job(write_job(tmp_path, BASE + "\n[engine\n"))
    with pytest.raises(ConfigError, match=r"^job: 'nosuchjob' is neither a file nor a bundled job"):
        load_job("nosuchjob")
    with pytest.raises(ConfigError, match=r"resumes"):
        load_job(tmp_path / "absent.toml")


def test_database_parts_build_a_dsn_without_leaking_the_password(tmp_path: Path) -> None:
    text = edited("[engine]", """[database]
driver = "ODBC Driver 18 for SQL Server"
server = "db.example.com"
port = 1433
database = "hr"
user = "engine"
password_env = "HR_DB_PASSWORD"
items_table = "dbo.engine_items"
pool_size = 8
options = { Encrypt = "yes", TrustServerCertificate = "no" }

[engine]""")
    job = load_job(write_job(tmp_path, text))
    assert job.database is not None
    dsn = job.database.resolve_dsn({"HR_DB_PASSWORD": "s3cr;et"})
    assert dsn == (
        "Driver={ODBC Driver 18 for SQL Server};Server=db.example.com,1433;Database=hr;"
        "Uid=engine;Pwd={s3cr;et};Encrypt=yes;TrustServerCertificate=no;"
    )
    with pytest.raises(ConfigError, match=r"^database\.password_env: environment variable"):
        job.database.resolve_dsn({})
    store = job.store_settings(environ={"HR_DB_PASSWORD": "s3cr;et"})
    assert store.items_table == "dbo.engine_items"
    assert store.pool_size == 8
    assert "s3cr" not in repr(store)
    other = job.store_settings(dsn="Driver=SQLite3;Database=x.db")
    assert other.dsn.endswith("x.db")
    assert other.items_table == "dbo.engine_items"


def test_postgres_parts_use_a_port_attribute() -> None:
    config = DatabaseConfig(driver="PostgreSQL Unicode", server="127.0.0.1", port=5432,
                            database="test", user="postgres")
    assert config.resolve_dsn({}) == (
        "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=test;Uid=postgres;"
    )


def test_inline_dsn_password_never_in_repr(tmp_path: Path) -> None:
    dsn = '[database]\ndsn = "Driver=SQLite3;Database=a.db;PWD=hunter2"\n\n[engine]'
    text = edited("[engine]", dsn)
    job = load_job(write_job(tmp_path, text))
    assert "hunter2" not in repr(job)
    assert "hunter2" not in repr(job.database)
    assert job.store_settings().dsn.endswith("PWD=hunter2")


def test_no_database_and_no_dsn(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path))
    with pytest.raises(ConfigError, match=r"^database:"):
        job.store_settings()


def test_bundled_resumes_job() -> None:
    assert "resumes" in list_bundled_jobs()
    job = load_job("resumes")
    spec = job.spec
    assert job.origin == "bundled:resumes"
    assert (spec.model, spec.endpoint, spec.schema_name) == (
        "gpt-4o-mini", "/v1/chat/completions", "resume"
    )
    assert spec.user_template == "{resume_text}"
    assert len(spec.system_prompt) > 500
    source = spec.source
    assert (source.table, source.key_column, source.key_type) == ("candidates", "userid", "int")
    assert (source.text_columns, source.processed_column) == (("resume_text",), "LastProcessed")
    schema = spec.output_schema
    assert schema is not None
    fields = [
        "full_name", "email", "phone", "location", "current_title", "current_employer",
        "years_experience", "skills", "education", "work_history", "certifications",
        "languages", "summary",
    ]
    assert list(schema["properties"]) == fields
    assert schema["required"] == fields
    # one column per field, PascalCase, lists and objects as JSON text
    assert [c.field for c in spec.columns] == fields
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", c.column) for c in spec.columns)
    kinds = {c.field: c.kind for c in spec.columns}
    assert {f for f, k in kinds.items() if k == "json"} == {
        "skills", "education", "work_history", "certifications", "languages"
    }
    assert kinds["years_experience"] == "float"
    assert all(c.max_length for c in spec.columns if c.kind == "text")
    edu = schema["properties"]["education"]["items"]
    assert edu["properties"]["graduation_year"]["type"] == ["integer", "null"]
    work = schema["properties"]["work_history"]["items"]
    assert work["properties"]["end_year"]["type"] == ["integer", "null"]
    assert job.engine_settings().max_in_flight >= 2


def test_bundled_job_also_loads_as_a_file(tmp_path: Path) -> None:
    bundled = Path(__file__).resolve().parents[2] / "engine" / "jobs"
    for name in ("resumes.toml", "resume_schema.json"):
        (tmp_path / name).write_bytes((bundled / name).read_bytes())
    job = load_job(tmp_path / "resumes.toml")
    assert job.spec == load_job("resumes").spec
