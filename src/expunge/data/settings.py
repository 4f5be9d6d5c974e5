"""``DataSettings``: where a run's examples come from (``path``, ``split``, ``max_examples``),
with the two fields any hub dataset needs beyond them:

- ``config``: the dataset's config name (``load_dataset(path, name=config)``), e.g. TOFU's
  ``forget10`` or MUSE's ``knowmem``;
- ``columns``: example field → the dataset's column, e.g. ``{prompt: question, response:
  answer}`` for TOFU; the unmapped columns stay in ``Example.meta``.

In YAML::

    data:
      path: locuslab/TOFU          # or a local directory in the same layout
      config: forget10_perturbed
      split: train
      columns: {prompt: question, response: answer}
"""

from __future__ import annotations

from pydantic import Field, field_validator

from expunge.config import StrictModel
from expunge.data.examples import Example
from expunge.data.loaders import check_columns, load_examples
from expunge.errors import ConfigError


class DataSettings(StrictModel):
    path: str | None = None  # .jsonl file, dataset directory (hub layout or save_to_disk), hub id
    config: str | None = None  # the dataset's config name (hub datasets and their local copies)
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict)  # example field -> dataset column
    max_examples: int | None = Field(default=None, ge=1)

    @field_validator("columns")
    @classmethod
    def _columns_are_fields(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_columns(value)
        except ConfigError as err:  # pydantic reports ValueError as a validation problem
            raise ValueError(str(err)) from None

    def load(self) -> list[Example]:
        """The examples these settings name (``ConfigError``/``DataError`` of one line if not)."""
        if self.path is None:
            raise ConfigError("no data given: set data.path to a .jsonl file, directory or hub id")
        return load_examples(
            self.path, self.split, self.config, self.columns or None, self.max_examples
        )
