"""Job files: read a TOML job (a path or a bundled name) into a JobSpec plus its settings.

A job file looks like this (every table but ``[source]``, ``[prompt]`` and ``[output]`` is
optional; unknown keys are errors, so a typo never passes silently)::

    name = "resumes"
    model = "gpt-4o-mini"
    endpoint = "/v1/chat/completions"

    [database]                      # dsn = "...", or the parts below
    driver = "ODBC Driver 18 for SQL Server"
    server = "db.example.com"
    port = 1433
    database = "hr"
    user = "engine"
    password_env = "HR_DB_PASSWORD" # the password itself never sits in the file

    [source]
    table = "dbo.aicandidate"
    key_column = "userid"
    text_columns = ["resume_text"]
    processed_column = "LastProcessed"

    [prompt]
    system = "..."
    user = "{resume_text}"          # placeholders name text columns

    [output]
    schema_name = "resume"
    schema_file = "resume_schema.json"   # relative to the job file; or an [output.schema] table

    [[columns]]
    field = "email"
    column = "Email"
    kind = "text"
    max_length = 320

    [engine]                        # any EngineSettings field
    batch_size = 200
    max_in_flight = 3

Every error is a ConfigError whose message starts with the TOML path of the value at fault,
for example ``columns[3].kind: 'txt' is not one of text, int, float, bool, json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import string
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from engine.errors import ConfigError, IdentifierError
from engine.job import ENDPOINTS, ColumnMapping, Endpoint, JobSpec, SourceSpec
from engine.settings import EngineSettings, StoreSettings, redact_dsn

__all__ = ["DatabaseConfig", "LoadedJob", "list_bundled_jobs", "load_job"]

Dialect = Literal["mssql", "postgresql", "mysql", "sqlite"]
DIALECTS: tuple[Dialect, ...] = ("mssql", "postgresql", "mysql", "sqlite")
KINDS = ("text", "int", "float", "bool", "json")
_BUNDLED_PACKAGE = "engine.jobs"
# A plain identifier, optionally schema-qualified: the store quotes these per dialect.
_IDENT_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,127}$")
_TOP_KEYS = (
    "name", "description", "model", "endpoint", "max_output_tokens", "temperature",
    "max_input_chars", "database", "source", "prompt", "output", "columns", "engine", "pricing",
)
_DATABASE_KEYS = (
    "dsn", "driver", "server", "port", "database", "user", "password_env", "options", "dialect",
    "items_table", "batches_table", "meta_table", "workers_table", "pool_size",
    "query_timeout_s", "outage_s",
)
_SOURCE_KEYS = (
    "table", "key_column", "key_type", "text_columns", "processed_column", "filter",
)
_PROMPT_KEYS = ("system", "user")
_OUTPUT_KEYS = (
    "schema", "schema_file", "schema_name", "strict", "embedding_column", "dimensions",
)
_COLUMN_KEYS = ("field", "column", "kind", "max_length")
_PRICING_KEYS = ("input", "cached_input", "output")
# The engine keys the job file may set: every EngineSettings field but the worker's identity.
_ENGINE_FIELD_TYPES: dict[str, Any] = {
    name: hint for name, hint in get_type_hints(EngineSettings).items() if name != "worker_id"
}


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """The job file's ``[database]`` table: a DSN or its parts, plus store table names."""

    dsn: str | None = field(default=None, repr=False)
    driver: str | None = None
    server: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password
    options: dict[str, str] = field(default_factory=dict)  # extra DSN attributes
    dialect: Dialect | None = None
    store: dict[str, Any] = field(default_factory=dict)  # items_table, pool_size, ...

    def __repr__(self) -> str:
        """Show the configuration without any password."""
        shown = redact_dsn(self.dsn) if self.dsn else None
        return (
            f"DatabaseConfig(dsn={shown!r}, driver={self.driver!r}, server={self.server!r}, "
            f"port={self.port!r}, database={self.database!r}, user={self.user!r}, "
            f"password_env={self.password_env!r}, dialect={self.dialect!r}, store={self.store!r})"
        )

    def resolve_dsn(self, environ: Mapping[str, str] | None = None) -> str:
        """Return the ODBC connection string, reading the password from ``password_env``."""
        if self.dsn:
            return self.dsn
        env = os.environ if environ is None else environ
        assert self.driver is not None  # checked when the file was loaded
        driver = self.driver
        parts = [f"Driver={_odbc_value(driver, always_brace=True)}"]
        if self.server is not None:
            server = self.server
            is_mssql = self.dialect == "mssql" or "sql server" in driver.lower()
            if self.port is not None and is_mssql:
                # Microsoft's driver has no Port attribute: the port rides on the server name.
                server = f"{server},{self.port}"
            parts.append(f"Server={_odbc_value(server)}")
            if self.port is not None and not is_mssql:
                parts.append(f"Port={self.port}")
        if self.database is not None:
            parts.append(f"Database={_odbc_value(self.database)}")
        if self.user is not None:
            parts.append(f"Uid={_odbc_value(self.user)}")
        if self.password_env is not None:
            password = env.get(self.password_env)
            if password is None:
                raise ConfigError(
                    f"database.password_env: environment variable {self.password_env!r} is not set"
                )
            parts.append(f"Pwd={_odbc_value(password)}")
        parts.extend(f"{key}={_odbc_value(value)}" for key, value in self.options.items())
        return ";".join(parts) + ";"


@dataclass(frozen=True, kw_only=True)
class LoadedJob:
    """A validated job file: the JobSpec plus the optional database and engine settings."""

    spec: JobSpec
    origin: str  # the file path, or "bundled:<name>"
    description: str = ""
    database: DatabaseConfig | None = None
    engine: dict[str, Any] = field(default_factory=dict)  # EngineSettings overrides

    def engine_settings(self, **overrides: Any) -> EngineSettings:
        """Build EngineSettings from the job's ``[engine]`` table, then ``overrides`` (flags)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(EngineSettings)})
        if unknown:
            raise ConfigError(f"{unknown[0]}: not an engine setting")
        merged = {**self.engine, **{k: v for k, v in overrides.items() if v is not None}}
        return EngineSettings(**merged)

    def store_settings(
        self, *, dsn: str | None = None, environ: Mapping[str, str] | None = None
    ) -> StoreSettings:
        """Build StoreSettings; ``dsn`` (a flag or ENGINE_DSN) wins over the job's database."""
        db = self.database or DatabaseConfig()
        dialect = None  # a DSN from elsewhere may name another database: detect its dialect
        if dsn is None:
            if self.database is None:
                raise ConfigError("database: the job has no [database] table and no DSN was given")
            dsn = db.resolve_dsn(environ)
            dialect = db.dialect
        return StoreSettings(dsn=dsn, dialect=dialect, **db.store)


def list_bundled_jobs() -> list[str]:
    """Return the names of the jobs shipped with the engine, sorted (``--job NAME``)."""
    root = resources.files(_BUNDLED_PACKAGE)
    return sorted(
        entry.name[: -len(".toml")]
        for entry in root.iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


def load_job(ref: str | Path, *, base_dir: str | Path | None = None) -> LoadedJob:
    """Load and validate a job file: a TOML path (relative to ``base_dir``) or a bundled name.

    A bare name without ".toml" or a slash ("resumes") means the bundled job of that name when
    there is one; anything else is a path. ``schema_file`` is read relative to the job file.
    Raises ConfigError (IdentifierError for a bad table or column name) naming the TOML path.
    """
    text, origin, folder = _locate(ref, base_dir)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML: {exc}") from None
    try:
        return _build(data, origin, folder, default_name=_stem(origin))
    except IdentifierError as exc:
        raise IdentifierError(f"{exc} (in {origin})") from None
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {origin})") from None


# -- locating the file ---------------------------------------------------------------------------


def _locate(ref: str | Path, base_dir: str | Path | None) -> tuple[str, str, Traversable]:
    """Return the job file's text, a name for messages, and the folder its paths are relative to."""
    as_text = str(ref)
    looks_like_path = (
        isinstance(ref, Path) or as_text.endswith(".toml") or "/" in as_text or os.sep in as_text
    )
    if not looks_like_path and as_text in list_bundled_jobs():
        root = resources.files(_BUNDLED_PACKAGE)
        return root.joinpath(f"{as_text}.toml").read_text("utf-8"), f"bundled:{as_text}", root
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        bundled = ", ".join(list_bundled_jobs()) or "none"
        raise ConfigError(f"job: {as_text!r} is neither a file nor a bundled job ({bundled})")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job: cannot read {str(path)!r}: {exc}") from None
    return text, str(path), path.parent


def _stem(origin: str) -> str:
    """Return the default job name: the file name without its extension."""
    if origin.startswith("bundled:"):
        return origin[len("bundled:"):]
    return Path(origin).stem


# -- checking values -----------------------------------------------------------------------------


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """Return ``table`` as a dict after rejecting unknown keys, suggesting the closest name."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {_typename(table)}")
    for key in table:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key{hint}; allowed: {', '.join(allowed)}")
    return table


def _typename(value: Any) -> str:
    """Name a TOML value's type the way a job file author thinks of it."""
    names = {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "an array", dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _str(table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    """Return a non-empty string value or None when absent (an error when required)."""
    path = f"{where}.{key}" if where else key
    if key not in table:
        if required:
            raise ConfigError(f"{path}: required")
        return None
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {_typename(value)}")
    if required and not value.strip():
        raise ConfigError(f"{path}: empty")
    return value


def _required(table: Mapping[str, Any], key: str, where: str) -> str:
    """Return a required, non-empty string value."""
    value = _str(table, key, where, required=True)
    if value is None:  # unreachable: _str raised already; keeps the type narrow
        raise ConfigError(f"{where}.{key}: required")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, *, minimum: int = 0) -> int | None:
    """Return an integer value >= minimum, or None when absent."""
    path = f"{where}.{key}" if where else key
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {_typename(value)}")
    if value < minimum:
        raise ConfigError(f"{path}: must be >= {minimum}, got {value}")
    return int(value)


def _number(table: Mapping[str, Any], key: str, where: str) -> float | None:
    """Return a number (integer or float) >= 0, or None when absent."""
    path = f"{where}.{key}" if where else key
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number, got {_typename(value)}")
    if value < 0:
        raise ConfigError(f"{path}: must be >= 0, got {value}")
    return float(value)


def _identifier(value: str, path: str, *, qualified: bool = False) -> str:
    """Check a table or column name is a plain identifier (``schema.table`` when qualified)."""
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(_IDENT_PART.match(part) for part in parts):
        raise IdentifierError(
            f"{path}: {value!r} is not a plain identifier (letters, digits, '_' and '$', "
            "starting with a letter or '_'"
            + (", optionally schema-qualified)" if qualified else ")")
        )
    return value


def _odbc_value(value: str, *, always_brace: bool = False) -> str:
    """Quote an ODBC attribute value when it holds characters the connection string reserves."""
    if always_brace or any(ch in value for ch in ";{}= ") or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


# -- building the job ----------------------------------------------------------------------------


def _build(data: dict[str, Any], origin: str, folder: Traversable, default_name: str) -> LoadedJob:
    """Turn the parsed TOML into a LoadedJob, checking every value."""
    _check_keys(data, _TOP_KEYS, "")
    name = _str(data, "name", "") or default_name
    description = _str(data, "description", "") or ""
    model = _str(data, "model", "", required=True) or ""
    endpoint_value = _str(data, "endpoint", "") or "/v1/chat/completions"
    if endpoint_value not in ENDPOINTS:
        raise ConfigError(f"endpoint: {endpoint_value!r} is not one of {', '.join(ENDPOINTS)}")
    endpoint: Endpoint = endpoint_value
    max_output_tokens = _int(data, "max_output_tokens", "", minimum=1)
    temperature = _number(data, "temperature", "")
    max_input_chars = _int(data, "max_input_chars", "", minimum=1)

    if "source" not in data:
        raise ConfigError("source: required (table, key_column, text_columns, processed_column)")
    source = _source(data["source"])
    system_prompt, user_template = _prompt(data.get("prompt", {}), source)
    output = _check_keys(data.get("output", {}), _OUTPUT_KEYS, "output")
    schema, schema_name, embedding_column, dimensions = _output(output, endpoint, folder)
    columns = _columns(data.get("columns", []), schema, source, endpoint)
    pricing = _pricing(data.get("pricing", {}))

    extra: dict[str, Any] = {}
    if max_input_chars is not None:
        extra["max_input_chars"] = max_input_chars
    spec = JobSpec(
        name=name,
        source=source,
        model=model,
        endpoint=endpoint,
        system_prompt=system_prompt,
        user_template=user_template,
        output_schema=schema,
        schema_name=schema_name,
        columns=columns,
        embedding_column=embedding_column,
        embedding_dimensions=dimensions,
        max_output_tokens=max_output_tokens,
        temperature=temperature,
        pricing=pricing,
        **extra,
    )
    database = _database(data["database"]) if "database" in data else None
    engine = _engine(data.get("engine", {}))
    return LoadedJob(
        spec=spec, origin=origin, description=description, database=database, engine=engine
    )


def _source(raw: Any) -> SourceSpec:
    """Read ``[source]``."""
    table = _check_keys(raw, _SOURCE_KEYS, "source")
    name = _required(table, "table", "source")
    key = _required(table, "key_column", "source")
    processed = _required(table, "processed_column", "source")
    _identifier(name, "source.table", qualified=True)
    _identifier(key, "source.key_column")
    _identifier(processed, "source.processed_column")
    key_type = _str(table, "key_type", "source") or "int"
    if key_type not in ("int", "str"):
        raise ConfigError(f"source.key_type: {key_type!r} is not one of int, str")
    raw_columns = table.get("text_columns")
    if raw_columns is None:
        raise ConfigError("source.text_columns: required (the columns the prompt reads)")
    if isinstance(raw_columns, str):
        raw_columns = [raw_columns]
    if not isinstance(raw_columns, list) or not raw_columns:
        raise ConfigError("source.text_columns: expected a non-empty array of column names")
    text_columns: list[str] = []
    for i, column in enumerate(raw_columns):
        path = f"source.text_columns[{i}]"
        if not isinstance(column, str):
            raise ConfigError(f"{path}: expected a string, got {_typename(column)}")
        text_columns.append(_identifier(column, path))
    if len(set(text_columns)) != len(text_columns):
        raise ConfigError("source.text_columns: a column is listed twice")
    extra_filter = _str(table, "filter", "source")
    return SourceSpec(
        table=name,
        key_column=key,
        text_columns=tuple(text_columns),
        processed_column=processed,
        key_type="int" if key_type == "int" else "str",
        extra_filter=extra_filter or None,
    )


def _prompt(raw: Any, source: SourceSpec) -> tuple[str, str]:
    """Read ``[prompt]``; every placeholder of the user template must name a text column."""
    table = _check_keys(raw, _PROMPT_KEYS, "prompt")
    system = _str(table, "system", "prompt") or ""
    user = _str(table, "user", "prompt")
    if user is None:
        user = "\n\n".join(f"{{{column}}}" for column in source.text_columns)
    try:
        parsed = list(string.Formatter().parse(user))
    except ValueError as exc:
        raise ConfigError(
            f"prompt.user: not a valid template ({exc}); write {{{{ for a literal brace"
        ) from None
    placeholders = [fname for _, fname, _, _ in parsed if fname is not None]
    for placeholder in placeholders:
        if placeholder not in source.text_columns:
            raise ConfigError(
                f"prompt.user: placeholder {{{placeholder}}} is not one of source.text_columns "
                f"({', '.join(source.text_columns)})"
            )
    return system, user


def _output(
    table: dict[str, Any], endpoint: Endpoint, folder: Traversable
) -> tuple[dict[str, Any] | None, str, str | None, int | None]:
    """Read ``[output]``: the schema (inline or a file), its name, or the embedding column."""
    schema_name = _str(table, "schema_name", "output") or "extraction"
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", schema_name):
        raise ConfigError(
            f"output.schema_name: {schema_name!r} must be 1-64 letters, digits, '_' or '-'"
        )
    strict = table.get("strict", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"output.strict: expected a boolean, got {_typename(strict)}")
    embedding_column = _str(table, "embedding_column", "output")
    dimensions = _int(table, "dimensions", "output", minimum=1)
    if endpoint == "/v1/embeddings":
        if embedding_column is None:
            raise ConfigError("output.embedding_column: required for /v1/embeddings")
        if "schema" in table or "schema_file" in table:
            raise ConfigError("output.schema: not used by /v1/embeddings; remove it")
        column = _identifier(embedding_column, "output.embedding_column")
        return None, schema_name, column, dimensions
    if embedding_column is not None or dimensions is not None:
        key = "embedding_column" if embedding_column is not None else "dimensions"
        raise ConfigError(f"output.{key}: only used by /v1/embeddings")
    if "schema" in table and "schema_file" in table:
        raise ConfigError("output.schema_file: give either schema or schema_file, not both")
    if "schema" in table:
        schema = table["schema"]
        where = "output.schema"
        if not isinstance(schema, dict):
            raise ConfigError(f"output.schema: expected a table, got {_typename(schema)}")
    elif "schema_file" in table:
        file_name = _required(table, "schema_file", "output")
        schema = _read_schema_file(file_name, folder)
        where = f"output.schema_file ({file_name})"
    else:
        raise ConfigError(f"output.schema: required for {endpoint} (or output.schema_file)")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        pointer = ".".join(str(p) for p in exc.absolute_path)
        raise ConfigError(
            f"{where}: not a valid JSON schema at '{pointer}': {exc.message}"
        ) from None
    if schema.get("type") != "object":
        raise ConfigError(f"{where}: the top level must be an object schema (type = \"object\")")
    if strict:
        problem = _strict_problem(schema, "")
        if problem:
            raise ConfigError(
                f"{where}: not valid in OpenAI strict mode: {problem} "
                "(set output.strict = false to skip this check)"
            )
    return schema, schema_name, None, None


def _read_schema_file(file_name: str, folder: Traversable) -> dict[str, Any]:
    """Read a JSON schema file relative to the job file's folder."""
    path = Path(file_name)
    target: Traversable = path if path.is_absolute() else folder.joinpath(file_name)
    if not target.is_file():
        raise ConfigError(f"output.schema_file: {file_name!r} not found next to the job file")
    try:
        loaded = json.loads(target.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"output.schema_file: cannot read {file_name!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"output.schema_file: {file_name!r} is not JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"output.schema_file: {file_name!r} must hold a JSON object")
    return loaded


def _strict_problem(schema: Any, pointer: str) -> str | None:
    """Return the first rule of OpenAI's strict structured outputs that ``schema`` breaks."""
    if not isinstance(schema, dict):
        return None
    here = pointer or "(root)"
    types_ = schema.get("type")
    type_list = types_ if isinstance(types_, list) else [types_]
    if "object" in type_list or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return f"{here}: additionalProperties must be false"
        missing = [name for name in props if name not in schema.get("required", [])]
        if missing:
            return f"{here}: every property must be required (missing {', '.join(missing)})"
        for name, sub in props.items():
            problem = _strict_problem(sub, f"{pointer}.properties.{name}".lstrip("."))
            if problem:
                return problem
    if "items" in schema:
        problem = _strict_problem(schema["items"], f"{pointer}.items".lstrip("."))
        if problem:
            return problem
    for combinator in ("anyOf", "$defs", "definitions"):
        branch = schema.get(combinator)
        subs = branch.items() if isinstance(branch, dict) else enumerate(branch or [])
        for key, sub in subs:
            problem = _strict_problem(sub, f"{pointer}.{combinator}.{key}".lstrip("."))
            if problem:
                return problem
    return None


def _schema_at(schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """Return the sub-schema a dotted field path points to, or None when it does not exist."""
    node: Any = schema
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node.get("properties", {}):
            return None
        node = node["properties"][part]
    return node if isinstance(node, dict) else None


def _columns(
    raw: Any, schema: dict[str, Any] | None, source: SourceSpec, endpoint: Endpoint
) -> tuple[ColumnMapping, ...]:
    """Read ``[[columns]]``: each output field, its column, kind and length limit."""
    if not isinstance(raw, list):
        raise ConfigError(
            f"columns: expected an array of tables ([[columns]]), got {_typename(raw)}"
        )
    if endpoint == "/v1/embeddings":
        if raw:
            raise ConfigError("columns: not used by /v1/embeddings (use output.embedding_column)")
        return ()
    if not raw:
        raise ConfigError("columns: at least one [[columns]] entry is needed")
    reserved = {source.key_column.lower(), source.processed_column.lower()}
    seen: dict[str, int] = {}
    mappings: list[ColumnMapping] = []
    for i, entry in enumerate(raw):
        where = f"columns[{i}]"
        table = _check_keys(entry, _COLUMN_KEYS, where)
        field_path = _required(table, "field", where)
        column = _required(table, "column", where)
        _identifier(column, f"{where}.column")
        if column.lower() in reserved:
            raise ConfigError(f"{where}.column: {column!r} is the key or the processed marker")
        if column.lower() in seen:
            first = seen[column.lower()]
            raise ConfigError(f"{where}.column: {column!r} is already used by columns[{first}]")
        seen[column.lower()] = i
        kind = _str(table, "kind", where) or "text"
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        max_length = _int(table, "max_length", where, minimum=1)
        if max_length is not None and kind not in ("text", "json"):
            raise ConfigError(f"{where}.max_length: only for kind text or json, not {kind}")
        if schema is not None:
            sub = _schema_at(schema, field_path)
            if sub is None:
                props = ", ".join(schema.get("properties", {}))
                raise ConfigError(
                    f"{where}.field: {field_path!r} is not a property of the output schema "
                    f"({props})"
                )
            declared = sub.get("type")
            declared_list = declared if isinstance(declared, list) else [declared]
            if kind != "json" and ({"array", "object"} & set(declared_list)):
                raise ConfigError(
                    f"{where}.kind: {field_path!r} is an array or object; use kind = \"json\""
                )
        mappings.append(
            ColumnMapping(
                field=field_path,
                column=column,
                kind=kind,  # type: ignore[arg-type]
                max_length=max_length,
            )
        )
    return tuple(mappings)


def _pricing(raw: Any) -> dict[str, float]:
    """Read ``[pricing]``: USD per 1M tokens, overriding the built-in table for this model."""
    table = _check_keys(raw, _PRICING_KEYS, "pricing")
    result: dict[str, float] = {}
    for key in table:
        value = _number(table, key, "pricing")
        assert value is not None
        result[key] = value
    return result


def _database(raw: Any) -> DatabaseConfig:
    """Read ``[database]``: a DSN, or driver/server/port/database/user/password_env."""
    table = _check_keys(raw, _DATABASE_KEYS, "database")
    dsn = _str(table, "dsn", "database")
    driver = _str(table, "driver", "database")
    parts = [k for k in ("driver", "server", "port", "database", "user", "password_env", "options")
             if k in table]
    if dsn is not None and parts:
        raise ConfigError(f"database.{parts[0]}: give either dsn or its parts, not both")
    if dsn is None and driver is None:
        raise ConfigError("database.dsn: required (or database.driver with the other parts)")
    if dsn is not None and not dsn.strip():
        raise ConfigError("database.dsn: empty")
    dialect = _str(table, "dialect", "database")
    if dialect is not None and dialect not in DIALECTS:
        raise ConfigError(f"database.dialect: {dialect!r} is not one of {', '.join(DIALECTS)}")
    options_raw = table.get("options", {})
    if not isinstance(options_raw, dict):
        raise ConfigError(f"database.options: expected a table, got {_typename(options_raw)}")
    options: dict[str, str] = {}
    for key, value in options_raw.items():
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"database.options.{key}: expected a string or integer")
        if not re.match(r"^[A-Za-z][A-Za-z0-9_ ]*$", key):
            raise ConfigError(f"database.options.{key}: not a valid ODBC attribute name")
        options[key] = str(value)
    password_env = _str(table, "password_env", "database")
    if password_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", password_env):
        raise ConfigError(
            "database.password_env: the NAME of an environment variable, not a password"
        )
    store: dict[str, Any] = {}
    for key in ("items_table", "batches_table", "meta_table", "workers_table"):
        value = _str(table, key, "database")
        if value is not None:
            store[key] = _identifier(value, f"database.{key}", qualified=True)
    pool_size = _int(table, "pool_size", "database", minimum=1)
    if pool_size is not None:
        store["pool_size"] = pool_size
    query_timeout = _int(table, "query_timeout_s", "database", minimum=0)
    if query_timeout is not None:
        store["query_timeout_s"] = query_timeout
    outage = _number(table, "outage_s", "database")
    if outage is not None:
        store["outage_s"] = outage
    return DatabaseConfig(
        dsn=dsn,
        driver=driver,
        server=_str(table, "server", "database"),
        port=_int(table, "port", "database", minimum=1),
        database=_str(table, "database", "database"),
        user=_str(table, "user", "database"),
        password_env=password_env,
        options=options,
        dialect=dialect,
        store=store,
    )


def _engine(raw: Any) -> dict[str, Any]:
    """Read ``[engine]``: EngineSettings fields by name, type-checked and range-checked."""
    table = _check_keys(raw, tuple(_ENGINE_FIELD_TYPES), "engine")
    result: dict[str, Any] = {}
    for key, value in table.items():
        result[key] = _coerce(value, _ENGINE_FIELD_TYPES[key], f"engine.{key}")
    try:
        EngineSettings(**result)
    except ConfigError as exc:
        raise ConfigError(f"engine.{exc}") from None
    return result


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check a TOML value against a settings field's type hint (int, float, str, or Optional)."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None):
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    wanted = " or ".join(
        {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}.get(o, str(o))
        for o in options
        if o is not type(None)
    )
    raise ConfigError(f"{path}: expected {wanted}, got {_typename(value)}")
