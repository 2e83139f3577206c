"""The ``cusum`` type's own keys of a ``[[detectors]]`` entry, and their validation.

The core hands over every key of the entry besides ``type``, ``signal``, ``name`` and
``reference`` (``DetectorSpec.params()``). Validating them with ``extra="forbid"`` turns a
misspelled key into an error that names it instead of a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class CusumParameters(BaseModel):
    """Keys of a ``cusum`` detector (see ``Cusum`` for what each means)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slack: float = Field(0.5, ge=0)
    threshold: float = Field(15.0, gt=0)
    warning_threshold: float | None = Field(None, gt=0)
    reference_size: int = Field(500, ge=2, strict=True)

    @model_validator(mode="after")
    def _warning_below_drift(self) -> "CusumParameters":
        if self.warning_threshold is not None and self.warning_threshold >= self.threshold:
            raise ValueError(
                f"warning_threshold ({self.warning_threshold}) must be below threshold ({self.threshold}), "
                "or the warning level is never reached"
            )
        return self

    def warning_level(self) -> float:
        return 0.75 * self.threshold if self.warning_threshold is None else self.warning_threshold

    @classmethod
    def parse(cls, params: dict) -> "CusumParameters":
        """Validate; raise ``ValueError`` naming each bad key, its value and what it takes."""
        try:
            return cls.model_validate(params)
        except ValidationError as error:
            problems = []
            for problem in error.errors():
                key = ".".join(str(part) for part in problem["loc"])
                if problem["type"] == "extra_forbidden":
                    problems.append(f"{key}: unknown parameter; cusum takes {', '.join(cls.model_fields)}")
                elif key:
                    problems.append(f"{key} = {problem.get('input')!r}: {problem['msg']}")
                else:
                    problems.append(problem["msg"].removeprefix("Value error, "))
            raise ValueError("; ".join(problems)) from None
