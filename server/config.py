"""Server settings: every `gptserve serve` flag, each also read from `GPTSERVE_<FLAG>` (a flag beats the variable)."""

from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPTSERVE_", extra="ignore", validate_default=True)

    model: str | None = Field(None, description="nanoGPT ckpt.pt, Hugging Face GPT-2 folder or hub id "
                                                "(default: the bundled model in weights/)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16")
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    max_batch_size: int = Field(8, ge=1, le=4096, description="sequences decoded together (KV-cache slots)")
    max_queue: int = Field(64, ge=0, le=1_000_000, description="requests that may wait for a slot; beyond: 429")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body accepted; beyond: 413")
    api_key: str | None = Field(None, description="when set, requests need 'Authorization: Bearer <key>'")
    shutdown_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests may take to finish "
                                                            "after SIGTERM")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field("info")
    log_format: Literal["text", "json"] = Field("text")

    @field_validator("model", "api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def describe_validation_error(error: ValidationError) -> str:
    """One line for a bad setting: which flag (and variable), what is wrong."""
    first = error.errors()[0]
    name = str(first["loc"][0]) if first.get("loc") else "setting"
    flag = "--" + name.replace("_", "-")
    env = "GPTSERVE_" + name.upper()
    message = first.get("msg", "invalid value")
    value = first.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float)) else ""
    more = f" (and {len(error.errors()) - 1} more problems)" if len(error.errors()) > 1 else ""
    return f"{flag} / {env}: {message[:1].lower() + message[1:]}{shown}{more}"
