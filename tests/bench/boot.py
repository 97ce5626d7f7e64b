#!/usr/bin/env python3
"""The boot path's figures (issue 3). Prints them and compares with the targets; asserts nothing.

  tests/bench/boot.sh            (builds berth --release, runs this)
  BERTH_BIN=... BENCH_RUNS=5 python3 tests/bench/boot.py

1. berth's own time in the boot path, without pulls or health waits. Three services with
   local images and no healthchecks. The compose file and env file come from S3 (moto), the
   release id from SSM, and identity from the IMDSv2 emulator, and a lifecycle hook is
   completed. It measures the wall time of `berth agent --once` and the CPU time of the
   berth process, on a cold boot (containers created) and a warm reboot (berth restarted
   over a running stack, which only checks). CPU time is berth's own work; wall time also
   holds Docker's create/start and moto's answers. Target: <= 100 ms. The same boots of a
   pinned release (`berth release create` into a versioned bucket, the images in a local
   registry, run by digest) beside the floating ones, with the time `berth release create`
   takes: what pinning costs a boot.
2. Resident memory (VmRSS) while holding after boot. Target: <= 10 MiB (issue 11; CodeDeploy's
   agent idles at about 45 MiB). BENCH_HOLD_SECS (2) of holding first; BENCH_SMAPS=FILE
   keeps the holding agent's /proc/PID/smaps.
3. Pulls of three images (BENCH_PULL_MB, default 24 MiB, of incompressible data each) from a local registry, three at
   once against one at a time (`pull_concurrency`). Target: parallel <= 0.5x sequential.
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BERTH = os.environ.get("BERTH_BIN", os.path.join(ROOT, "target", "release", "berth"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
IMAGE = "berth-test/web:1"
PULL_MB = int(os.environ.get("BENCH_PULL_MB", "24"))
# How long the agent holds before its memory is read (its watchdog looks again meanwhile).
HOLD_SECS = float(os.environ.get("BENCH_HOLD_SECS", "2"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker(*args, check=True):
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True).stdout


def cleanup(project):
    ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").split()
    if ids:
        docker("rm", "-fv", *ids)
    for net in docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").split():
        docker("network", "rm", net, check=False)


def start_emulator():
    p = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests/emulator/aws_emulator.py"), "--port", "0", "--exit-with-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = p.stdout.readline().split()
    return p, f"http://127.0.0.1:{line[1]}"


def start_moto():
    from moto.server import ThreadedMotoServer  # moto[server], installed by tests/setup.sh

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server, "http://127.0.0.1:%d" % server.get_host_and_port()[1]


def aws_env(moto, emulator):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto, AWS_ENDPOINT_URL_AUTO_SCALING=emulator,
        AWS_EC2_METADATA_SERVICE_ENDPOINT=emulator, AWS_EC2_METADATA_DISABLED="false",
        AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent", BERTH_LOG="info",
    )
    return env


def run_timed(cmd, env):
    """Runs to completion; returns (wall seconds, CPU seconds, exit code, output)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, p.returncode, out


def stamp(text):
    return datetime.strptime(text[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def pull_window(log):
    """Seconds from the `pulling` phase to the last image's `pulled`, from the agent's log.

    Both log targets are matched (`berth::serve::state`/`berth::engine::progress` now,
    `berth::health`/`berth::progress` before the modules moved), with or without a span
    prefix, so that an older binary can be measured beside a newer one."""
    start = end = None
    for line in log.splitlines():
        m = re.match(r"(\S+Z)\s+INFO (?:\S+ )?berth::(?:serve::state|health): phase phase=\"pulling\"", line)
        if m and start is None:
            start = stamp(m.group(1))
        m = re.match(r"(\S+Z)\s+INFO (?:\S+ )?berth::(?:engine::)?progress: progress subject=\"image [^\"]+\" state=\"pulled\"", line)
        if m:
            end = stamp(m.group(1))
    return end - start


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_boot(work):
    import boto3

    emu_proc, emulator = start_emulator()
    moto_server, moto = start_moto()
    try:
        s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        ssm = boto3.client("ssm", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        s3.create_bucket(Bucket="berth-bench")
        compose = "services:\n" + "".join(
            f"  {n}:\n    image: berth-test/web:${{RELEASE}}\n    env_file: app.env\n" for n in ("a", "b", "c")
        )
        s3.put_object(Bucket="berth-bench", Key="boot/compose.yaml", Body=compose.encode())
        s3.put_object(Bucket="berth-bench", Key="boot/app.env", Body=b"GREETING=bench\n")
        ssm.put_parameter(Name="/bench/release", Value="1", Type="String")
        env = aws_env(moto, emulator)

        def config(project, port):
            path = os.path.join(work, f"{project}.toml")
            with open(path, "w") as f:
                f.write(f"""project = "{project}"
compose = "s3://berth-bench/boot/compose.yaml"
env_files = ["s3://berth-bench/boot/app.env"]
release = "ssm:/bench/release"
run_dir = "{work}/run"
[health]
listen = "127.0.0.1:{port}"
[lifecycle]
hook = "launch"
""")
            return path

        # The pinned release: the same stack from a registry, made with berth release create.
        registry, reg_proc = start_registry(work)
        pinned_bucket = "berth-bench-pinned"
        s3.create_bucket(Bucket=pinned_bucket)
        s3.put_bucket_versioning(Bucket=pinned_bucket, VersioningConfiguration={"Status": "Enabled"})
        docker("tag", "berth-test/web:1", f"{registry}/bench/web:1")
        docker("push", f"{registry}/bench/web:1")
        s3.put_object(Bucket=pinned_bucket, Key="boot/compose.yaml",
                      Body=compose.replace("berth-test/web:", f"{registry}/bench/web:").encode())
        s3.put_object(Bucket=pinned_bucket, Key="boot/app.env", Body=b"GREETING=bench\n")
        store = f"s3://{pinned_bucket}/boot/"
        create = run_timed([BERTH, "release", "create", "1", "--store", store, "--compose", f"{store}compose.yaml",
                            "--env-file", f"{store}app.env"], dict(env, AWS_EC2_METADATA_DISABLED="true"))
        if create[2] != 0:
            print(f"boot: berth release create failed (exit {create[2]}):\n{create[3][-2000:]}")
            return None

        def pinned_config(project, port):
            path = config(project, port)
            with open(path) as f:
                text = f.read().replace("s3://berth-bench/", f"s3://{pinned_bucket}/")
            with open(path, "w") as f:
                f.write(text.replace('release = "ssm:/bench/release"\n',
                                     f'release = "ssm:/bench/release"\nmanifests = "{store}"\nstate_dir = "{work}/state"\n'))
            return path

        runs = {}
        try:
            for kind, make in (("floating", config), ("pinned", pinned_config)):
                cold, warm = [], []
                for i in range(RUNS):
                    project = f"berth-bench-boot-{os.getpid()}-{kind}-{i}"
                    cfg = make(project, free_port())
                    try:
                        cold.append(run_timed([BERTH, "agent", "--config", cfg, "--once"], env))
                        warm.append(run_timed([BERTH, "agent", "--config", cfg, "--once"], env))
                    finally:
                        cleanup(project)
                for name, done in (("cold", cold), ("warm", warm)):
                    bad = [r for r in done if r[2] != 0]
                    if bad:
                        print(f"boot: a {kind} {name} run failed (exit {bad[0][2]}):\n{bad[0][3][-2000:]}")
                        return None
                runs[kind] = (cold, warm)
        finally:
            reg_proc.terminate()
            reg_proc.wait(timeout=10)
            docker("rmi", f"{registry}/bench/web:1", check=False)
        cold, warm = runs["floating"]

        # Resident memory while holding after boot.
        project = f"berth-bench-rss-{os.getpid()}"
        port = free_port()
        cfg = config(project, port)
        p = subprocess.Popen([BERTH, "agent", "--config", cfg], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rss = hwm = None
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2))
                    if status.get("in_service"):
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            time.sleep(HOLD_SECS)  # settle: holding, health endpoint polled once more below
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            threads = len(os.listdir(f"/proc/{p.pid}/task"))
            with open(f"/proc/{p.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            rss = int(fields["VmRSS"].split()[0]) / 1024
            hwm = int(fields["VmHWM"].split()[0]) / 1024
            anon = int(fields["RssAnon"].split()[0]) / 1024
            filed = int(fields["RssFile"].split()[0]) / 1024
            print(f"  (holding: {threads} threads; RSS {anon:.1f} MiB heap and stacks + {filed:.1f} MiB of mapped code)")
            if os.environ.get("BENCH_SMAPS"):  # where the memory is, mapping by mapping
                with open(f"/proc/{p.pid}/smaps") as f, open(os.environ["BENCH_SMAPS"], "w") as out:
                    out.write(f.read())
        finally:
            p.terminate()
            p.wait(timeout=10)
            cleanup(project)
        return cold, warm, rss, hwm, runs["pinned"], create[0]
    finally:
        emu_proc.stdin.close()
        emu_proc.wait(timeout=10)
        moto_server.stop()


def start_registry(work):
    """A local registry without auth (Docker trusts plain HTTP on 127.0.0.0/8): its address
    and process."""
    port = free_port()
    regdir = os.path.join(work, f"registry-{port}")
    os.makedirs(regdir)
    with open(os.path.join(regdir, "config.yml"), "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {regdir}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    reg = subprocess.Popen(["docker-registry", "serve", os.path.join(regdir, "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"127.0.0.1:{port}", reg


def bench_pulls(work):
    registry, reg = start_registry(work)
    images = [f"{registry}/bench/pull{i}:1" for i in range(3)]
    try:
        for i, ref in enumerate(images):
            ctx = os.path.join(work, f"img{i}")
            os.makedirs(ctx)
            with open(os.path.join(ctx, "blob"), "wb") as f:
                f.write(os.urandom(PULL_MB * 1024 * 1024))
            with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                f.write("FROM berth-test/tool:1\nCOPY blob /blob\n")
            docker("build", "-q", "-t", ref, ctx)
            docker("push", ref)
        compose_dir = os.path.join(work, "pulls")
        os.makedirs(compose_dir)
        with open(os.path.join(compose_dir, "compose.yaml"), "w") as f:
            f.write("services:\n" + "".join(f"  p{i}:\n    image: {ref}\n" for i, ref in enumerate(images)))
        results = {}
        for concurrency in (1, 3):
            times = []
            for run in range(max(3, RUNS // 2)):
                project = f"berth-bench-pull-{os.getpid()}-{concurrency}-{run}"
                cfg = os.path.join(work, f"{project}.toml")
                with open(cfg, "w") as f:
                    f.write(f'project = "{project}"\ncompose = "{compose_dir}/compose.yaml"\nlocal = true\n'
                            f'pull_concurrency = {concurrency}\n[health]\nlisten = "127.0.0.1:{free_port()}"\n')
                docker("rmi", *images, check=False)
                env = dict(os.environ, BERTH_LOG="info")
                try:
                    wall, _, code, out = run_timed([BERTH, "agent", "--config", cfg, "--once"], env)
                    if code != 0:
                        print(f"pulls: run failed (exit {code}):\n{out[-2000:]}")
                        return None
                    times.append(pull_window(out))
                finally:
                    cleanup(project)
            results[concurrency] = times
        return results
    finally:
        reg.terminate()
        reg.wait(timeout=10)
        for ref in images:
            docker("rmi", ref, check=False)


def verdict(ok):
    return "PASS" if ok else "MISS"


def main():
    if not os.access(BERTH, os.X_OK):
        sys.exit(f"bench: no berth binary at {BERTH} (run tests/bench/boot.sh, or set BERTH_BIN)")
    work = tempfile.mkdtemp(prefix="berth-bench-boot-")
    try:
        parts = os.environ.get("BENCH_ONLY", "boot,pulls").split(",")
        boot = bench_boot(work) if "boot" in parts else False
        pulls = bench_pulls(work) if "pulls" in parts else False
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = boot is None or pulls is None
    print(f"\nberth boot path ({RUNS} runs; binary {os.path.relpath(BERTH, ROOT)})")
    if boot:
        cold, warm, rss, hwm, (pcold, pwarm), create = boot
        for name, runs in (("cold boot (3 containers created)", cold), ("warm reboot (stack already up)", warm),
                           ("pinned release, cold boot", pcold), ("pinned release, warm reboot", pwarm)):
            walls = [r[0] * 1000 for r in runs]
            cpus = [r[1] * 1000 for r in runs]
            print(f"  {name:<36} wall {median(walls):7.1f} ms (min {min(walls):6.1f})   berth CPU {median(cpus):6.1f} ms (min {min(cpus):5.1f})")
        for name, a, b in (("cold", cold, pcold), ("warm", warm, pwarm)):
            wall = median([r[0] for r in b]) / median([r[0] for r in a])
            cpu = median([r[1] for r in b]) / median([r[1] for r in a])
            print(f"  pinned/floating, {name}: wall {wall:.2f}x, berth CPU {cpu:.2f}x")
        print(f"  berth release create (S3 versions and sha256, 3 digests from the registry) {create * 1000:.0f} ms wall")
        own = median([r[1] * 1000 for r in cold])
        print(f"  berth's own time (CPU, cold boot)   {own:.1f} ms   target <= 100 ms   {verdict(own <= 100)}")
        print(f"  resident memory while holding       VmRSS {rss:.1f} MiB (peak {hwm:.1f} MiB)   target <= 10 MiB   {verdict(rss <= 10)}")
    if pulls:
        seq, par = median(pulls[1]), median(pulls[3])
        print(f"  (pulls: 3 images, each a {PULL_MB} MiB incompressible layer over a shared base, local registry)")
        print(f"  3 image pulls, one at a time        {seq * 1000:7.1f} ms (runs: {', '.join(f'{t*1000:.0f}' for t in pulls[1])})")
        print(f"  3 image pulls, in parallel          {par * 1000:7.1f} ms (runs: {', '.join(f'{t*1000:.0f}' for t in pulls[3])})")
        print(f"  parallel/sequential = {par / seq:.2f}x   target <= 0.50x   {verdict(par / seq <= 0.5)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
