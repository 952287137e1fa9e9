"""The job: which table to read, what to ask the model, and where each answer goes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import ConfigError

__all__ = ["ColumnMapping", "Endpoint", "JobSpec", "SourceSpec"]

Endpoint = Literal["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]
ENDPOINTS: tuple[Endpoint, ...] = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """The source table: its key, the text columns fed to the prompt, and the processed marker.

    A row is pending while ``processed_column`` IS NULL (and ``extra_filter`` holds, when
    given); applying a result sets the marker to the database's current timestamp.
    """

    table: str  # "candidates" or schema-qualified "dbo.aicandidate"
    key_column: str
    text_columns: tuple[str, ...]
    processed_column: str
    key_type: Literal["int", "str"] = "int"
    extra_filter: str | None = None  # trusted SQL predicate from the job file, ANDed

    def __post_init__(self) -> None:
        """Reject an empty column list."""
        if not self.text_columns:
            raise ConfigError("source.text_columns: at least one column is needed")


@dataclass(frozen=True, kw_only=True)
class ColumnMapping:
    """One output field written to one column.

    ``field`` is a dotted path into the model's JSON answer. Lists and objects are stored as
    JSON text. A value longer than ``max_length`` characters is cut to that length (the rule
    is stated so operators can rely on it; nothing is silently dropped but the tail).
    """

    field: str
    column: str
    kind: Literal["text", "int", "float", "bool", "json"] = "text"
    max_length: int | None = None


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything that makes one extraction: source, model, prompt, schema and column map."""

    name: str
    source: SourceSpec
    model: str
    endpoint: Endpoint = "/v1/chat/completions"
    system_prompt: str = ""
    user_template: str = ""  # str.format placeholders name source columns: "{resume_text}"
    output_schema: dict[str, Any] | None = None  # strict JSON schema; None for embeddings
    schema_name: str = "extraction"
    columns: tuple[ColumnMapping, ...] = ()
    embedding_column: str | None = None  # embeddings: the column that receives the vector
    embedding_dimensions: int | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    max_input_chars: int = 400_000  # longer texts are dead-lettered, never sent
    pricing: dict[str, float] = field(default_factory=dict)  # per 1M tokens: input, output

    def __post_init__(self) -> None:
        """Check the fields that every other module relies on, naming the one at fault."""
        if not _JOB_NAME.match(self.name):
            raise ConfigError(
                f"name: {self.name!r} must be 1-40 letters, digits, '_', '.' or '-'"
            )
        if self.endpoint not in ENDPOINTS:
            raise ConfigError(f"endpoint: {self.endpoint!r} is not one of {', '.join(ENDPOINTS)}")
        if not self.model:
            raise ConfigError("model: empty")
        if self.endpoint == "/v1/embeddings":
            if not self.embedding_column:
                raise ConfigError("embedding_column: required for /v1/embeddings")
        elif self.output_schema is None:
            raise ConfigError(f"output_schema: required for {self.endpoint}")

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Every source column the writer sets, besides the processed marker."""
        if self.embedding_column:
            return (self.embedding_column,)
        return tuple(m.column for m in self.columns)
