#!/usr/bin/env python3
"""readme_test.py: run every command of README.md, as a user would, against
a server this script starts itself.

The README's conventions (docs/development.md, "The README test", has them
for people editing the README):

- Commands are in ```sh blocks, run in order from the top of the checkout.
  One command may span lines (a trailing backslash, or a quoted string left
  open). ```json, ```js, ```python and other blocks are not run.
- A comment line directly after a command (no blank line between) shows
  its output, and further comment lines continue it. When it starts with
  `{` or `[` the test checks the output's shape: the same JSON type, every
  key the comment names present somewhere in the answer, and every
  `"key":"string"` pair equal (numbers are not compared); a status code
  after the JSON (`{...} 409`, from `-w ' %{http_code}'`) must follow the
  body. Otherwise (`# 401`) it is text the output must contain, `...`
  standing for anything. A note that is not output goes on the command's own line
  (`curl ...   # why`) or after a blank line.
- The README says `localhost:8080`; the test rewrites it (and
  `127.0.0.1:8080`) to the port of the server it runs, `./build/embedd` to
  the binary under test, and `/tmp/` to a fresh temporary directory.
- The server and the commands get the caller's environment without its
  EMBEDD_* variables, so they see embedd's defaults.
- Every command must exit 0; `curl` counts an HTTP error status as a
  failure (`--fail-with-body`), unless the command prints the status
  itself (`-w '%{http_code}'`).
- An HTML comment on the line before a block says how to treat it:
    <!-- readme-test: skip (why) -->       not run; the test prints why
    <!-- readme-test: pending issue17 -->  not run until the route exists
    <!-- readme-test: serve -->            the block is one `embedd serve`
        command: the test stops its server (which must exit 0), then
        starts this command in the background on a free port instead.
  Every ```sh block without a marker is run; a block that starts a server
  in the foreground without the `serve` marker would hang, so the test
  refuses `embedd serve` outside a serve block.
- The README's "Settings" section may name only flags that
  `embedd serve --help` lists (rows that say "pending" excepted), and
  docs/settings.md must name every flag that `--help` lists.

Usage: scripts/readme_test.py [--binary build/embedd] [--readme README.md] [--list]
       scripts/readme_test.py --print-settings -- --model --port ...
Exit status 0 when every command ran and matched; 1 otherwise. Python 3
standard library only.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
COMMAND_TIMEOUT = 60   # seconds for one README command
START_TIMEOUT = 60     # seconds for a server to say it listens (sanitizer builds are slow)
STOP_TIMEOUT = 30


class Block:
    """One ```sh block: where it is, its marker and its commands."""

    def __init__(self, line, marker, text):
        self.line = line          # 1-based line of the opening fence
        self.marker = marker      # text of the readme-test marker, or ""
        self.text = text
        self.commands = split_commands(text)


class Command:
    def __init__(self, text):
        self.text = text
        self.expect = []          # comment lines that promise output


def parse_blocks(path):
    """Every ```sh block of the file, with the marker just above it."""
    blocks = []
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    last_marker = ""
    while i < len(lines):
        line = lines[i]
        m = MARKER.match(line.strip())
        if m:
            last_marker = m.group(1)
            i += 1
            continue
        if line.startswith("```"):
            lang = line[3:].strip()
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if lang == "sh":
                blocks.append(Block(start + 1, last_marker, "\n".join(body)))
            last_marker = ""
            i += 1
            continue
        if line.strip():
            last_marker = ""
        i += 1
    return blocks


def is_complete(text):
    """Whether text is a whole shell command: no open quote, no trailing \\."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def split_commands(text):
    """The commands of one block, each with the output comments after it.

    A comment line directly after a command (no blank line between) shows
    that command's output; further comment lines continue it."""
    commands = []
    current = []
    after_command = False
    for line in text.split("\n"):
        stripped = line.strip()
        if not current:
            if not stripped:
                after_command = False
                continue
            if stripped.startswith("#"):
                if after_command:
                    commands[-1].expect.append(stripped[1:])
                continue
        current.append(line)
        if is_complete("\n".join(current)):
            commands.append(Command("\n".join(current)))
            current = []
            after_command = True
    if current:
        commands.append(Command("\n".join(current)))
    return commands


def json_keys(value, into):
    """Every object key anywhere in value, with its string values."""
    if isinstance(value, dict):
        for k, v in value.items():
            into.setdefault(k, set())
            if isinstance(v, str):
                into[k].add(v)
            json_keys(v, into)
    elif isinstance(value, list):
        for v in value:
            json_keys(v, into)
    return into


def parse_output(out):
    """The JSON value the output starts with, and the text after it."""
    text = out.lstrip()
    value, end = json.JSONDecoder().raw_decode(text)
    return value, text[end:]


def check_shape(expect_lines, out):
    """None when out has the shape the README's comment shows, else why not."""
    # The comment may be wrapped over several lines; a note may follow the
    # JSON after two spaces.
    expect = " ".join(line.strip() for line in expect_lines)
    if expect.startswith(("{", "[")):
        expect = re.split(r"\s{2,}", expect, maxsplit=1)[0]
        # `-w ' %{http_code}'` after the body: `{...} 409`
        status = re.search(r"[}\]] (\d{3})$", expect)
        try:
            got, rest = parse_output(out)
        except ValueError:
            return "expected JSON like %s, got %r" % (expect[:80], out[:200])
        if status and rest.strip() != status.group(1):
            return "expected status %s after the body, got %r" % (status.group(1), rest.strip())
        want_type = dict if expect.startswith("{") else list
        if not isinstance(got, want_type):
            return "expected a JSON %s, got %r" % (want_type.__name__, out[:200])
        keys = json_keys(got, {})
        for key in re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:', expect):
            if key not in keys:
                return "key %r missing in %r" % (key, out[:300])
        for key, value in re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:\s*"([^"]*)"', expect):
            if value not in keys.get(key, set()):
                return "%r is not %r in %r" % (key, value, out[:300])
        return None
    pos = 0
    for piece in expect.split("..."):
        piece = piece.strip()
        if not piece:
            continue
        found = out.find(piece, pos)
        if found < 0:
            return "output lacks %r: %r" % (piece, out[:300])
        pos = found + len(piece)
    return None


class Server:
    """The embedd serve process the commands talk to."""

    def __init__(self, tmp, env):
        self.tmp = tmp
        self.env = env
        self.proc = None
        self.port = None
        self.log_path = None
        self.count = 0

    def start(self, argv):
        self.count += 1
        self.log_path = os.path.join(self.tmp, "server-%d.log" % self.count)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = open(self.log_path, errors="replace").read()
            m = re.search(r"listening on http://[^:]+:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                return None
            if self.proc.poll() is not None:
                return "server exited with %d:\n%s" % (self.proc.returncode, text[-2000:])
            time.sleep(0.05)
        self.stop()
        return "server did not listen within %d s" % START_TIMEOUT

    def stop(self):
        """SIGTERM; the README promises exit status 0. None when it was."""
        if self.proc is None:
            return None
        proc = self.proc
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return "server did not stop within %d s of SIGTERM" % STOP_TIMEOUT
        if proc.returncode != 0:
            text = open(self.log_path, errors="replace").read()
            return "server exited with %d after SIGTERM:\n%s" % (proc.returncode, text[-2000:])
        return None


def rewrite(text, binary, port, tmp):
    """The README's command as the test runs it."""
    text = text.replace("./build/embedd", shlex.quote(binary))
    text = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", "127.0.0.1:%d" % port, text)
    text = text.replace("/tmp/", tmp + "/")
    return text


def serve_argv(command, binary, tmp):
    """argv for a serve block's command, on a free loopback port."""
    argv = shlex.split(command, comments=True)
    if not argv or argv[0] != "./build/embedd" or argv[1:2] != ["serve"]:
        return None
    argv[0] = binary
    argv = [a.replace("/tmp/", tmp + "/") for a in argv]
    out = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--port", "-p", "--host", "--hostname"):
            skip = True
            continue
        if a.startswith(("--port=", "--host=", "--hostname=")):
            continue
        out.append(a)
    return out + ["--host", "127.0.0.1", "--port", "0"]


def help_flags(binary):
    """Every flag `embedd serve --help` lists."""
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30).stdout
    return parse_help(text)


def parse_help(text):
    """{flag: (argument, help text, default, env)} from `serve --help`."""
    flags = {}
    name = None
    for line in text.split("\n"):
        m = re.match(r"^  (?:-[a-z], )?(--[a-z0-9-]+)(\[=BOOL\]| \S+)?\s+(.*)$", line)
        if m:
            name = m.group(1)
            arg = m.group(2) or ""
            desc = m.group(3)
            default = ""
            d = re.search(r"\s*\(default ([^()]*)\)$", desc)
            if d:
                default = d.group(1)
                desc = desc[:d.start()]
            flags[name] = [arg, desc, default, ""]
            continue
        e = re.match(r"^\s+\[env (\w+)\]", line)
        if e and name:
            flags[name][3] = e.group(1)
    return flags


def print_settings(binary, names):
    """Table rows for the README's settings, from --help (never by hand)."""
    flags = help_flags(binary)
    for n in names:
        if n not in flags:
            print("unknown flag %s" % n, file=sys.stderr)
            return 1
        arg, desc, default, env = flags[n]
        print("| `%s%s` | `%s` | %s | %s |" % (n, arg.replace("|", "\\|"), env, default or "none",
                                             desc.replace("|", "\\|")))
    return 0


def check_settings(binary, readme):
    """Problems with the flags the README and docs/settings.md name."""
    problems = []
    flags = help_flags(binary)
    if not flags:
        return ["`embedd serve --help` listed no flags"]
    text = open(readme, encoding="utf-8").read()
    m = re.search(r"\n## Settings\n(.*?)\n## ", text, re.S)
    if not m:
        return ["README has no '## Settings' section"]
    for row in m.group(1).split("\n"):
        if not row.startswith("|") or "pending" in row:
            continue
        for flag in re.findall(r"`(--[a-z0-9-]+)", row.split("|")[1]):
            if flag not in flags:
                problems.append("README settings name %s, which `serve --help` does not list" % flag)
    full = open(os.path.join(ROOT, "docs/settings.md"), encoding="utf-8").read()
    for flag in flags:
        if "`%s" % flag not in full:
            problems.append("docs/settings.md lacks %s (listed by `serve --help`)" % flag)
    return problems


# curl exits 0 on an HTTP error status; under the test it must not, unless
# the command asks for the status itself (-w '%{http_code}').
CURL_FAILS = "curl() { command curl --fail-with-body \"$@\"; }\n"


def run_command(cmd, binary, port, tmp, env):
    text = rewrite(cmd.text, binary, port, tmp)
    if "%{http_code}" not in text:
        text = CURL_FAILS + text
    try:
        p = subprocess.run(["bash", "-o", "pipefail", "-c", text], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timed out after %d s" % COMMAND_TIMEOUT
    if p.returncode != 0:
        return "exit status %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout[-1000:], p.stderr[-1000:])
    if cmd.expect:
        return check_shape(cmd.expect, p.stdout)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.environ.get("EMBEDD_BIN", os.path.join(ROOT, "build/embedd")))
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    ap.add_argument("--list", action="store_true", help="print the blocks and commands, run nothing")
    ap.add_argument("--print-settings", action="store_true",
                    help="print settings table rows for the flags after -- from `serve --help`")
    ap.add_argument("flags", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    if args.print_settings:
        return print_settings(binary, args.flags)
    blocks = parse_blocks(args.readme)
    if args.list:
        for b in blocks:
            print("line %d [%s]" % (b.line, b.marker or "run"))
            for c in b.commands:
                print("  $ " + c.text.replace("\n", "\n    "))
                for e in c.expect:
                    print("  # " + e.strip())
        return 0

    started = time.monotonic()
    failures = []
    ran = 0
    skipped = []
    for problem in check_settings(binary, args.readme):
        failures.append("settings: " + problem)
    tmp = tempfile.mkdtemp(prefix="readme-test-")
    # The README's commands assume embedd's defaults: no EMBEDD_* setting
    # from the caller's environment (an API key, a data directory) applies.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDD_")}
    env["PATH"] = os.path.dirname(binary) + os.pathsep + env.get("PATH", "")
    server = Server(tmp, env)
    try:
        why = server.start([binary, "serve", "--host", "127.0.0.1", "--port", "0"])
        if why:
            print("FAIL: the default server: " + why)
            return 1
        for b in blocks:
            where = "%s:%d" % (os.path.basename(args.readme), b.line)
            if b.marker.startswith("skip") or b.marker.startswith("pending"):
                skipped.append("%s: %s" % (where, b.marker))
                continue
            if b.marker == "serve":
                if len(b.commands) != 1:
                    failures.append("%s: a serve block holds one command" % where)
                    continue
                argv = serve_argv(b.commands[0].text, binary, tmp)
                if argv is None:
                    failures.append("%s: a serve block must be `./build/embedd serve ...`" % where)
                    continue
                why = server.stop() or server.start(argv)
                ran += 1
                if why:
                    failures.append("%s: %s\n    %s" % (where, b.commands[0].text, why))
                    print("FAIL %s: %s" % (where, why))
                    if server.proc is None:
                        server.start([binary, "serve", "--host", "127.0.0.1", "--port", "0"])
                else:
                    print("ok   %s: (background) %s" % (where, b.commands[0].text))
                continue
            if b.marker:
                failures.append("%s: unknown marker %r" % (where, b.marker))
                continue
            for c in b.commands:
                if re.search(r"\bembedd serve\b", c.text):
                    failures.append("%s: `embedd serve` outside a serve block: %s" % (where, c.text))
                    continue
                why = run_command(c, binary, server.port, tmp, env)
                ran += 1
                first = c.text.split("\n")[0]
                if why:
                    failures.append("%s: %s\n    %s" % (where, c.text, why))
                    print("FAIL %s: %s\n     %s" % (where, first, why))
                else:
                    print("ok   %s: %s" % (where, first))
        why = server.stop()
        if why:
            failures.append("final server stop: " + why)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for s in skipped:
        print("skip " + s)
    print("readme_test: %d commands run, %d blocks skipped, %d failures, %.1f s"
          % (ran, len(skipped), len(failures), time.monotonic() - started))
    for f in failures:
        print("FAILED " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
