"""The driver's S3 credentials kept out of Ray's runtime environments while a grid runs.

Ray Tune copies the driver's ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SECURITY_TOKEN`` and ``AWS_SESSION_TOKEN`` into every trial's runtime environment
(``ENV_VARS_TO_PROPAGATE`` in ``ray/tune/execution/class_cache.py``), and Ray writes each
runtime environment in plain text to the session's ``logs/runtime_env_agent.log``. So
while a grid runs the driver holds such credentials in a credentials file of its own
(``AWS_SHARED_CREDENTIALS_FILE``, mode 0600 in a private folder, removed afterwards)
instead of in its environment; boto3 and pyarrow read the file as they read the variables.
Trials get no credentials from the driver: like every Ray worker, they use their node's
(the environment ``ray start`` or ``ray.init`` ran in, a credentials file, an instance role).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

# the variables Tune propagates, and their keys in a shared credentials file
PROPAGATED = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SECURITY_TOKEN": "aws_security_token",
    "AWS_SESSION_TOKEN": "aws_session_token",
}


@contextlib.contextmanager
def credentials_out_of_environment() -> Iterator[None]:
    """Within the block, the credentials of :data:`PROPAGATED` found in ``os.environ`` live
    in a private credentials file (under the profile ``AWS_PROFILE`` names, else
    ``default``) that ``AWS_SHARED_CREDENTIALS_FILE`` points to; the environment is
    restored and the file removed afterwards."""
    found = {name: os.environ[name] for name in PROPAGATED if name in os.environ}
    if not found:
        yield
        return
    saved = {name: os.environ.get(name) for name in (*PROPAGATED, "AWS_SHARED_CREDENTIALS_FILE")}
    folder = tempfile.mkdtemp(prefix="raysvc-credentials-")  # mode 0700
    path = os.path.join(folder, "credentials")
    lines = [f"[{os.environ.get('AWS_PROFILE') or 'default'}]"]
    lines += [f"{PROPAGATED[name]} = {value}" for name, value in found.items()]
    try:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        for name in found:
            del os.environ[name]
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = path
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)
