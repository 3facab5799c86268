"""Schemathesis hooks for .ci/fuzz.

Project-scoped routes need a project the key may act on, which schemathesis cannot
guess. Every case gets the fuzz project as `projectId`, except a case whose path
parameters are deliberately invalid and whose `projectId` is not a UUID: that one is
sent as generated, to be refused. A valid id replaced by another valid id keeps
positive cases positive and negative ones negative.
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


@schemathesis.hook
def before_call(context, case):
    params = case.path_parameters
    if not params or "projectId" not in params:
        return
    meta = case.meta
    negative = meta is not None and meta.path_parameters == DataGenerationMethod.negative
    if negative and not _is_uuid(params["projectId"]):
        return
    params["projectId"] = PROJECT_ID
