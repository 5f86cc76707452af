"""The server's settings: one frozen dataclass shared by the embedded server, the Ray deployment and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """What `rerank-serve` is started with (the CLI's options, minus where to listen).

    max_batch_tokens: the token budget of one runtime call, and the runtime's own per-batch budget.
    max_batch_wait_ms: how long pending pairs wait for others to join their batch.
    max_client_batch: documents per request; max_input_chars: characters per query or document.
    max_queue: pairs waiting (not yet running) across all requests; beyond it requests get 429.
    cross_request_batching: False scores each request on its own (one request per runtime call); for comparison.
    """

    export_dir: str
    devices: str | None = None
    provider: str | None = None
    max_batch_tokens: int = 16384
    max_batch_wait_ms: float = 2.0
    max_client_batch: int = 1000
    max_input_chars: int = 20000
    max_queue: int = 20000
    model_name: str | None = None
    api_key: str | None = None
    cross_request_batching: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_client_batch", "max_input_chars", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        wait = self.max_batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 60_000:
            raise ValueError(f"max_batch_wait_ms must be a number of milliseconds in [0, 60000], got {wait!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string, or None to leave the server open")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serve settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body worth reading: every text at its limit, 4 bytes per character, plus JSON."""
        return (self.max_client_batch + 1) * (self.max_input_chars * 4 + 64) + 65536
