"""The one definition of user tags on stored records: bounded in count and length (documented in the
OpenAPI schema), so a request cannot store thousands of rows or megabyte keys."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_TAGS = 64
TagKey = Annotated[str, Field(min_length=1, max_length=128)]
TagValue = Annotated[str, Field(max_length=512)]
Tags = Annotated[
    dict[TagKey, TagValue],
    Field(max_length=MAX_TAGS, description=f"At most {MAX_TAGS} tags; keys 1–128 characters, values up to 512."),
]
