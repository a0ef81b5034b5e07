"""Every admin endpoint has a CLI verb (``purge``, ``pins``, ``unpin``, ``jobs``, ``cancel``)
with prewarm's exit-code rules; a refused token names its file and the daemon, in every verb
and in ``status``; ``status`` tells last success from last error and counts recent errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.fakes.registry import FakeRegistry
from tests.operator import admin_daemon, write_token
from tests.test_cli_admin import admin_args, run_cli


async def test_pins_unpin_purge_jobs_cancel_round_trip(
    fake: FakeRegistry, storage: Path, tmp_path: Path
) -> None:
    fake.add_image("team/app", "1", [os.urandom(20_000), os.urandom(30_000)])
    token = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token) as daemon:
        admin = admin_args(daemon, token)
        code, out, err = await run_cli("prewarm", "fake.test/team/app:1", "--pin", *admin)
        assert code == 0, (out, err)
        job_id = re.search(r"prewarm job (\w+):", out)
        assert job_id, out

        code, out, err = await run_cli("jobs", *admin)
        assert code == 0, err
        assert re.search(rf"^{job_id[1]}\s+done\s+1\s+1\s", out, re.M), out
        code, out, err = await run_cli("jobs", job_id[1], *admin)
        assert code == 0, err
        assert "  fake.test/team/app:1: done" in out
        code, out, err = await run_cli("cancel", job_id[1], *admin)
        assert (code, out) == (0, f"prewarm {job_id[1]}: done\n"), err  # finished: unchanged
        code, out, err = await run_cli("cancel", "no-such-job", *admin)
        assert code == 2
        assert "no-such-job" in err

        code, out, err = await run_cli("pins", *admin)
        assert code == 0, err
        assert re.search(r"^fake\.test/team/app:1\s+sha256:", out, re.M), out
        assert out.endswith("1 pins\n")

        code, out, err = await run_cli("purge", "fake.test/team/app:1", *admin)
        assert code == 2, (out, err)
        assert "is pinned: unpin it first" in out

        code, out, err = await run_cli("unpin", "fake.test/team/app:1", *admin)
        assert code == 0, (out, err)
        assert out.startswith("unpinned fake.test/team/app:1 (sha256:")
        code, out, err = await run_cli("unpin", "fake.test/team/app:1", *admin)
        assert code == 2
        assert "is not pinned" in out
        code, out, err = await run_cli("pins", *admin)
        assert out == "REFERENCE  DIGEST  PLATFORMS  BLOBS  PINNED\n0 pins\n"

        code, out, err = await run_cli("purge", "fake.test/team/app:1", *admin)
        assert code == 0, (out, err)
        assert re.match(r"purged fake\.test/team/app:1 \(sha256:\w+\): 4 blobs, ", out), (
            out
        )  # manifest, config, 2 layers
        code, out, err = await run_cli("images", *admin)
        assert out.splitlines()[-1].startswith("0 images")
        code, out, err = await run_cli("purge", "fake.test/team/app:1", *admin)
        assert code == 2
        assert "is not cached" in out


async def test_a_refused_token_names_the_file_and_the_daemon_in_every_verb(
    fake: FakeRegistry, storage: Path, tmp_path: Path
) -> None:
    token = write_token(tmp_path / "token")
    wrong = write_token(tmp_path / "wrong", "not-the-token")
    async with admin_daemon(storage, fake, token) as daemon:
        refused = f"the token in {wrong} was refused by the daemon at {daemon.admin_url} (401)"
        for verb in (["pins"], ["unpin", "fake.test/a:1"], ["purge", "fake.test/a:1"],
                     ["jobs"], ["cancel", "x"], ["images"], ["prewarm", "fake.test/a:1"]):  # fmt: skip
            code, out, err = await run_cli(*verb, *admin_args(daemon, wrong))
            assert code == 3, (verb, out, err)
            assert refused in err, (verb, err)
            assert "Bearer" not in err
        code, out, err = await run_cli("status", *admin_args(daemon, wrong))
        assert code == 3, (out, err)
        assert out.startswith(f"cachesvc at {daemon.admin_url}: ready")  # the summary still
        assert f"admin API:       {refused}" in out
        code, out, err = await run_cli("status", *admin_args(daemon, token))
        assert code == 0, (out, err)
        assert "admin API:" not in out
    async with admin_daemon(storage, fake, None) as daemon:  # the admin API is disabled
        code, out, err = await run_cli("pins", *admin_args(daemon, token))
        assert code == 3
        assert f"the daemon at {daemon.admin_url} refused the request (403): " in err
        assert "admin.token_file" in err


async def test_status_shows_last_success_and_last_error_apart_and_recent_errors(
    fake: FakeRegistry, storage: Path, tmp_path: Path, http: object
) -> None:
    fake.add_image("team/app", "1", [os.urandom(1000)])
    token = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token) as daemon:
        code, out, err = await run_cli("status", "--admin", daemon.admin_url)
        assert "(no upstream requests yet)" in out
        code, out, err = await run_cli(
            "prewarm", "fake.test/team/app:1", *admin_args(daemon, token)
        )
        assert code == 0, (out, err)
        code, out, err = await run_cli("status", "--admin", daemon.admin_url)
        line = next(x for x in out.splitlines() if fake.url in x)
        assert re.search(r"healthy\s+last success \d+s ago, last error never; "
                         r"0 errors in the last 5 minutes$", line), line  # fmt: skip
        fake.faults.status = 500
        for n in (2, 3):  # distinct tags: each one goes upstream
            code, out, err = await run_cli("prewarm", f"fake.test/team/app:{n}",
                                           *admin_args(daemon, token))  # fmt: skip
            assert code == 1, (out, err)
        code, out, err = await run_cli("status", "--admin", daemon.admin_url)
        line = next(x for x in out.splitlines() if fake.url in x)
        match = re.search(r"FAILING\s+last success \d+s ago, last error \d+s ago; "
                          r"(\d+) errors in the last 5 minutes$", line)  # fmt: skip
        assert match, line
        assert int(match[1]) >= 2
