"""Schemathesis hooks for .ci/fuzz.

Project-scoped routes need a project the key may act on, which schemathesis cannot
guess. Every case gets the fuzz project as `projectId`, except a case whose path
parameters are deliberately invalid and whose `projectId` is not a UUID: that one is
sent as generated, to be refused. A valid id replaced by another valid id keeps
positive cases positive and negative ones negative.

An operation may let a body be left out (`requestBody.required: false`); the coverage
phase still sends "no body" as a case meant to be refused. Such a case gets a body
that breaks the schema instead, so it stays negative for the right reason.
"""

import os
import uuid

import schemathesis
from schemathesis import DataGenerationMethod

PROJECT_ID = os.environ["FUZZ_PROJECT_ID"]


def _is_uuid(value):
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _optional_body(case):
    raw = getattr(case.operation.definition, "raw", {}) or {}
    body = raw.get("requestBody")
    return body is not None and body.get("required") is not True


@schemathesis.hook
def before_call(context, case):
    meta = case.meta
    if (
        meta is not None
        and meta.body == DataGenerationMethod.negative
        and type(case.body).__name__ == "NotSet"
        and _optional_body(case)
    ):
        # An unknown property: every body schema here refuses additional ones.
        case.body = {"not_a_field": True}
        case.media_type = "application/json"
    _project(case)


def _project(case):
    params = case.path_parameters
    if not params or "projectId" not in params:
        return
    meta = case.meta
    negative = meta is not None and meta.path_parameters == DataGenerationMethod.negative
    if negative and not _is_uuid(params["projectId"]):
        return
    params["projectId"] = PROJECT_ID
