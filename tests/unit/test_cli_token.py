"""`exportctl token`: development tokens only, accepted by the API's own verifier."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from api.auth.tokens import StaticKey, TokenVerifier
from exportctl.cli import main
from exportctl.commands.token import NotDevelopmentSecretError, development_secret, mint_token

SECRET = "a-development-secret-long-enough-for-hs256-0123456789abcdef"


def _dev_root(tmp_path: Path) -> Path:
    (tmp_path / "jwt_secret").write_text(SECRET + "\n")
    return tmp_path


def test_token_for_an_admin_passes_the_api_verifier_as_an_administrator() -> None:
    user = uuid.uuid4()
    token = mint_token(SECRET, user, admin=True)
    principal = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"]).verify(token)
    assert principal.user_id == user
    assert principal.is_admin


def test_token_without_admin_is_a_plain_user_that_expires() -> None:
    verifier = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"])
    assert not verifier.verify(mint_token(SECRET, uuid.uuid4())).is_admin
    expired = mint_token(SECRET, uuid.uuid4(), lifetime_seconds=60, now=1_000_000)
    with pytest.raises(Exception, match="expired"):
        verifier.verify(expired)


def test_development_secret_is_read_from_the_stack_root(tmp_path: Path) -> None:
    root = _dev_root(tmp_path)
    assert development_secret({"EXPORTCTL_DEV_ROOT": str(root)}) == SECRET
    assert development_secret({"EXPORTCTL_DEV_ROOT": str(root), "JWT_SECRET": SECRET}) == SECRET


def test_refuses_when_jwt_secret_is_not_the_development_secret(tmp_path: Path) -> None:
    environ = {"EXPORTCTL_DEV_ROOT": str(_dev_root(tmp_path)), "JWT_SECRET": "x" * 64}
    with pytest.raises(NotDevelopmentSecretError, match="not the local stack"):
        development_secret(environ)


def test_refuses_without_a_local_stack(tmp_path: Path) -> None:
    with pytest.raises(NotDevelopmentSecretError, match="bring the local stack up"):
        development_secret({"EXPORTCTL_DEV_ROOT": str(tmp_path / "none")})


def test_command_prints_a_token_or_exits_1_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user = str(uuid.uuid4())
    monkeypatch.setenv("EXPORTCTL_DEV_ROOT", str(_dev_root(tmp_path)))
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert main(["token", "--user", user]) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"])
    assert str(verifier.verify(token).user_id) == user

    monkeypatch.setenv("JWT_SECRET", "y" * 64)
    assert main(["token", "--user", user, "--admin"]) == 1
    assert "not the local stack's development secret" in capsys.readouterr().err
