"""FAKE kubectl for tend's end-to-end suites (tests/support/k3s.rs starts it).

No API server can run on these machines, so this script stands in for `k3s kubectl`
for the three commands tend sends (agent/src/reconcile/k3s.rs, agent/src/health.rs):

    delete --ignore-not-found --wait=false -f -
    rollout status KIND.GROUP/NAME --timeout=5s [-n NAMESPACE]
    get addons.k3s.cattle.io -n kube-system NAME -o jsonpath={.spec.checksum}

It refuses what the real kubectl refuses, with the real one's message:
- an unknown command (`error: unknown command "x" for "kubectl"`) or flag
  (`error: unknown flag: --x`);
- `delete -f -` with no object in its input (`error: no objects passed to delete`),
  or with a document that has no kind, apiVersion or metadata.name;
- `rollout status` of a workload that is not in the cluster
  (`Error from server (NotFound): deployments.apps "x" not found`), or of a kind
  that has no rollout (only Deployment, DaemonSet and StatefulSet of group apps);
- `get` of an Addon that does not exist (`Error from server (NotFound):
  addons.k3s.cattle.io "x" not found`).
What it cannot answer as kubectl would (another resource to get, another output
format, delete by name) it refuses too, saying FAKE: a test must not pass because
the fake accepted something it does not model.

The cluster it answers for is the auto-deploy directory as K3s would have applied
it: an object exists when a file K3s deploys (every .yaml, .yml or .json below the
directory, dotfiles skipped) declares it, read by the K3s oracle of the manifest
corpus (tests/corpus/k3s/oracle.py: K3s's own path from a file to objects). An
Addon NAME exists when a file's name up to its first dot is NAME; its
spec.checksum is the SHA-256 of that file's bytes, as K3s records it once applied.

Every call is recorded in the log: `ARGS: <arguments>`, the input of a delete
followed by `--- end`, and for a get the tend files' hashes at that moment
(`ON DISK: name=sha256 ...`).
"""

import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "corpus", "k3s"))

import oracle  # noqa: E402  (needs the path above)
import yaml  # noqa: E402

# The kinds `kubectl rollout status` knows, by the names it accepts for them.
ROLLOUT_KINDS = {
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "daemonset": "DaemonSet",
    "daemonsets": "DaemonSet",
    "ds": "DaemonSet",
    "statefulset": "StatefulSet",
    "statefulsets": "StatefulSet",
    "sts": "StatefulSet",
}
ADDON_TYPES = {"addon", "addons", "addon.k3s.cattle.io", "addons.k3s.cattle.io"}


class Fail(Exception):
    """Exit 1 with this message on stderr, as kubectl does."""


def parse(args, value_flags, bool_flags):
    """kubectl's flag parsing for one command: (positional, {flag: value}).

    `value_flags` maps every spelling to its canonical name; `--x=v` and `--x v`
    both work; a bool flag takes `--x` or `--x=true|false`. Anything else that
    starts with `-` is an unknown flag.
    """
    positional, flags = [], {}
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positional.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positional.append(a)
            continue
        name, eq, value = a.partition("=")
        if name in value_flags:
            if not eq:
                if i >= len(args):
                    raise Fail("error: flag needs an argument: %r in %s" % (name.lstrip("-")[:1], name))
                value = args[i]
                i += 1
            flags[value_flags[name]] = value
        elif name in bool_flags:
            if eq and value not in ("true", "false"):
                raise Fail('error: invalid argument "%s" for "%s" flag: strconv.ParseBool: parsing "%s": invalid syntax' % (value, name, value))
            flags[bool_flags[name]] = value if eq else "true"
        else:
            raise Fail("error: unknown flag: %s" % name if name.startswith("--") else "error: unknown shorthand flag: %r in %s" % (name[1:2], a))
    return positional, flags


def deployed_files(manifests):
    """The files K3s deploys from the directory (tests/support/k3s.rs k3s_files)."""
    out = []
    for root, dirs, files in os.walk(manifests):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and f.lower().endswith((".yaml", ".yml", ".json")):
                out.append(os.path.join(root, f))
    return out


def cluster_has(manifests, identity, name):
    """Whether a deployed file declares the object `identity` ("Kind.group ns/name")."""
    for path in deployed_files(manifests):
        with open(path, "rb") as fh:
            data = fh.read()
        if name.encode() not in data:
            continue  # cannot declare it; spares reading large files
        result, _, _ = oracle.evaluate(data)
        if identity in result.get("objects", []):
            return True
    return False


def delete(args, log, flags_dir):
    _, flags = parse(
        args,
        {"-f": "filename", "--filename": "filename"},
        {"--ignore-not-found": "ignore-not-found", "--wait": "wait"},
    )
    if flags.get("filename") != "-":
        raise Fail("FAKE kubectl: only `delete -f -` is modelled, not %s" % " ".join(args))
    if os.path.exists(os.path.join(flags_dir, "kubectl-delete-hangs")):
        time.sleep(600)
    if os.path.exists(os.path.join(flags_dir, "kubectl-delete-refuses")):
        raise Fail("error: the server has asked for the client to provide credentials")
    text = sys.stdin.buffer.read().decode("utf-8", "replace")
    log.write("%s\n--- end\n" % text)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise Fail('error: error parsing STDIN: %s' % " ".join(str(e).split()))
    if not docs:
        raise Fail("error: no objects passed to delete")
    said = []
    for d in docs:
        if not isinstance(d, dict):
            raise Fail('error: unable to decode "STDIN": json: cannot unmarshal %s into Go value of type map[string]interface {}' % type(d).__name__)
        shown = json.dumps(d, separators=(",", ":"))
        if not d.get("kind"):
            raise Fail("error: unable to decode \"STDIN\": Object 'Kind' is missing in '%s'" % shown)
        if not d.get("apiVersion"):
            raise Fail('error: unable to recognize "STDIN": no matches for kind "%s" in version ""' % d["kind"])
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        if not meta.get("name"):
            raise Fail("error: resource name may not be empty")
        group = d["apiVersion"].rpartition("/")[0]
        said.append('%s%s "%s" deleted' % (d["kind"].lower(), "." + group if group else "", meta["name"]))
    print("\n".join(said))


def rollout(args, manifests, flags_dir):
    if not args or args[0].startswith("-"):
        raise Fail('error: required subcommand of "kubectl rollout" (history, pause, restart, resume, status, undo)')
    if args[0] != "status":
        raise Fail('error: unknown command "%s" for "kubectl rollout"' % args[0])
    positional, flags = parse(
        args[1:],
        {"--timeout": "timeout", "-n": "namespace", "--namespace": "namespace", "--revision": "revision"},
        {"-w": "watch", "--watch": "watch"},
    )
    if len(positional) != 1 or "/" not in positional[0]:
        raise Fail("error: you must provide a resource as TYPE/NAME, got %r" % positional)
    resource, name = positional[0].split("/", 1)
    kind_name, _, group = resource.partition(".")
    kind = ROLLOUT_KINDS.get(kind_name.lower())
    if kind is None or group not in ("", "apps"):
        raise Fail('error: no status viewer has been implemented for %s' % resource)
    namespace = flags.get("namespace", "default")
    plural = kind.lower() + "s"
    if not cluster_has(manifests, "%s.apps %s/%s" % (kind, namespace, name), name):
        raise Fail('Error from server (NotFound): %s.apps "%s" not found' % (plural, name))
    shown = {"Deployment": "deployment", "DaemonSet": "daemon set", "StatefulSet": "statefulset"}[kind]
    if os.path.exists(os.path.join(flags_dir, "kubectl-rollout-fails")):
        raise Fail(
            'Waiting for %s "%s" rollout to finish: 0 of 1 updated replicas are available...\n'
            "error: timed out waiting for the condition" % (shown, name)
        )
    print('%s "%s" successfully rolled out' % (shown, name))


def get(args, manifests, log):
    positional, flags = parse(
        args,
        {"-n": "namespace", "--namespace": "namespace", "-o": "output", "--output": "output"},
        {},
    )
    if not positional:
        raise Fail("error: You must specify the type of resource to get.")
    if positional[0].lower() not in ADDON_TYPES:
        raise Fail("FAKE kubectl: only `get addons.k3s.cattle.io` is modelled, not %s" % positional[0])
    if len(positional) != 2:
        raise Fail("FAKE kubectl: only `get` of one Addon by name is modelled, not %r" % positional[1:])
    if flags.get("output") != "jsonpath={.spec.checksum}":
        raise Fail("FAKE kubectl: only -o jsonpath={.spec.checksum} is modelled, not %r" % flags.get("output"))
    name = positional[1]
    hashes = {}
    for path in deployed_files(manifests):
        with open(path, "rb") as fh:
            hashes[path] = hashlib.sha256(fh.read()).hexdigest()
    log.write("ON DISK: %s\n" % " ".join(
        "%s=%s" % (os.path.basename(p), h) for p, h in sorted(hashes.items()) if os.path.basename(p).startswith("tend-")
    ))
    # K3s keeps Addons in kube-system.
    found = [p for p in hashes if os.path.basename(p).split(".")[0] == name]
    if flags.get("namespace", "default") != "kube-system" or not found:
        raise Fail('Error from server (NotFound): addons.k3s.cattle.io "%s" not found' % name)
    sys.stdout.write(hashes[found[0]])


def main():
    # fake_kubectl.py LOG MANIFESTS FLAGS_DIR -- kubectl arguments...
    log_path, manifests, flags_dir, sep = sys.argv[1:5]
    assert sep == "--", sys.argv
    args = sys.argv[5:]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("ARGS: %s\n" % " ".join(args))
        log.flush()
        try:
            if not args:
                raise Fail("FAKE kubectl: no command")
            command, rest = args[0], args[1:]
            if command == "delete":
                delete(rest, log, flags_dir)
            elif command == "rollout":
                rollout(rest, manifests, flags_dir)
            elif command == "get":
                get(rest, manifests, log)
            else:
                raise Fail('error: unknown command "%s" for "kubectl"' % command)
        except Fail as e:
            log.write("REFUSED: %s\n" % str(e).splitlines()[-1])
            sys.stderr.write("%s\n" % e)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
