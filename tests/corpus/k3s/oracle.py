#!/usr/bin/env python3
"""Independent oracle: which objects K3s's deploy controller applies from each corpus file.

This script is a test oracle for tend.  It shares no code with tend: it re-implements, in
Python, the path that K3s takes from a manifest file to the objects it applies, so that
tend's own reading of the same files can be checked against it.  The path in K3s is
pkg/deploy/controller.go (objectSet -> yamlToObjects -> isEmptyYaml / toObjects),
apimachinery's LineReader + YAMLReader, yaml.ToJSON (sigs.k8s.io/yaml on go-yaml v2), the
unstructured JSON decoder, then wrangler's ObjectSet and apply.  It answers for the file
contents as they are: K3s's own "%{VAR}%" template substitution is not applied.

Rules, in order:

 1. The file is read as bytes and cut into lines the way bufio.ReadLine does: "\r\n" or
    "\n" ends a line and is replaced by "\n" (so CRLF becomes LF; a lone "\r" stays).
 2. Documents are split like apimachinery's YAMLReader: a line that starts with "---" in
    column 0 ends the document.  After the "---" only whitespace or a "#comment" may
    follow; anything else ("----", "--- |", "--- !x", "---foo") refuses the whole file
    ("invalid separator").  A separator met while the current document is still empty
    stays as the first line of the next document (YAML reads it as a document start).
 3. A chunk is skipped when every line, stripped of whitespace, is empty, is exactly "---"
    or starts with "#" (K3s isEmptyYaml).  Every other chunk must yield an object:
    - A UTF-8 BOM is not whitespace to isEmptyYaml, so when the file starts with a BOM and
      its first document is empty or comments-only, that chunk is kept, go-yaml skips the
      BOM and reads null, the decoder finds no kind, and K3s refuses the file ("bom before
      empty document").  A BOM before real content is harmless.
    - For the same reason any other kept chunk that holds no YAML value ("--- # comment"
      alone, "~", "null") refuses the file ("empty document").  So a document that loads
      as None is dropped only when isEmptyYaml dropped it; no corpus file has such a chunk.
 4. A chunk whose first non-whitespace character is "{" is passed through as JSON by
    yaml.ToJSON (strict JSON: a YAML flow mapping such as "{a: b}" fails -> "invalid
    JSON").  Every other chunk is YAML.  Only its first document is read (go-yaml's
    Unmarshal stops there).  Parsing uses a PyYAML safe loader whose scalar resolution is
    go-yaml v2's, not PyYAML's own: y/Y/n/N are booleans; "0o17", "0X1F", "08" and "1e3"
    are numbers; "1:30", "=", dates and timestamps stay strings; unknown tags ("!foo") are
    ignored; a "<<" merge overwrites keys that came before it, in document order.  The
    parser is libyaml (CSafeLoader, the C library go-yaml was ported from) except for a
    chunk with a BOM past its first character, which goes to the pure-Python parser: like
    go-yaml, it skips a BOM only at the start of the stream.
    Errors -> "invalid YAML": a parse error; text that is not UTF-8; and what
    sigs.k8s.io/yaml cannot turn into JSON (a null map key, an int key above int64, NaN
    or Inf values, an anchor that contains itself).  A result that is not a mapping ->
    "not a mapping".
    Checked once by differential runs against a throwaway Go program (not kept here) that
    runs the same path with the real go-yaml v2.4 and sigs.k8s.io/yaml: the corpus, about
    180 hand-written edge cases and 4,300 mutated files, with no disagreement.  The summary also reports any corpus file where
    plain yaml.safe_load would have given a different answer (none in this corpus).
 5. If the document has a top-level "items" key (whatever its kind) it is a List: "items"
    must be a sequence (null counts as empty; anything else -> "invalid items"); every
    item must be a mapping or null ("not a mapping"); an item with neither a (string,
    non-empty) kind nor apiVersion gets kind = the list's kind less a trailing "List" and
    apiVersion = the list's apiVersion.  The List itself must have a string kind.
    Otherwise the document itself is the object.
 6. Each object needs a non-empty string apiVersion, kind and metadata.name ("missing
    apiVersion/kind/metadata.name", or "not a string" when the value is a boolean,
    number, mapping...).  An apiVersion with more than one "/" is not a group/version
    ("invalid apiVersion").  A metadata.namespace that is set must be a string ("not a
    string").
 7. Identity: group = the part of apiVersion before "/" ("" without "/"); namespace = None
    for the cluster-scoped kinds in CLUSTER_SCOPED below, else metadata.namespace, or
    "default" when it is absent or empty (wrangler apply's default namespace).
 8. objects.json maps each corpus file (*.yaml, *.yml under this folder, path relative to
    it) to {"objects": ["Kind[.group] ns/name" | "Kind[.group] name", ...]} in file order
    with duplicates kept, or to {"refused": "<reason>"}; keys sorted, indent 1, final
    newline.  Wrangler's ObjectSet keeps one object per (GVK, namespace as written, name),
    so a duplicate would be applied once, with the last copy's content (none in this corpus).

What it does not model: the API server.  Objects whose apiVersion the cluster no longer
serves (extensions/v1beta1, rbac v1beta1, policy/v1beta1 PodSecurityPolicy ...) are listed
as K3s would try to apply them; on a current cluster that apply fails for that GVK.

Regenerate (from the repository root):

    python3 tests/corpus/k3s/oracle.py > /dev/null

writes tests/corpus/k3s/objects.json next to this script and prints a short summary (files,
objects, refused files with reasons, List expansions) on stdout.  Needs Python 3.11 and
PyYAML (pip install pyyaml).  With or without PyYAML's libyaml binding, objects.json
comes out the same for this corpus.
"""

import json
import math
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "objects.json")

BOM = "\ufeff"

# (group, kind) pairs that are cluster-scoped; everything else is namespaced.
CLUSTER_SCOPED = {
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("policy", "PodSecurityPolicy"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    # Also cluster-scoped in Kubernetes, though not in the list this oracle was specified
    # with (no corpus object has these kinds):
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
    # Not ("helm.cattle.io", "HelmChartConfig"): its CRD says "scope: Namespaced"
    # (helm-controller/crd-helm.cattle.io_helmchartconfigs.yaml in this corpus), and K3s's
    # own examples put it in kube-system.  No corpus object is a HelmChartConfig.
}


class Refused(Exception):
    """K3s would not apply anything from the file: args = (reason, detail)."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------
# Line reading and document splitting (apimachinery LineReader + YAMLReader, K3s isEmptyYaml)

# Go's unicode.IsSpace, which bytes.TrimSpace / strings.TrimSpace use.  Python's
# str.strip() would also strip U+001C..U+001F, and neither strips the BOM.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def go_trim(b: bytes) -> bytes:
    s = b.decode("utf-8", errors="surrogateescape")
    return s.strip(GO_SPACE).encode("utf-8", errors="surrogateescape")


def read_lines(data: bytes):
    """Lines as bufio.ReadLine + LineReader give them: each ends in exactly one b"\\n"."""
    lines = []
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            lines.append(data[pos:] + b"\n")
            break
        line = data[pos:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        lines.append(line + b"\n")
        pos = nl + 1
    return lines


def split_documents(data: bytes):
    """apimachinery yaml.YAMLReader.Read, repeated until EOF."""
    chunks = []  # (bytes, file line number of its first line)
    buf = []
    start = 1
    for lineno, line in enumerate(read_lines(data), 1):
        if line.startswith(b"---"):
            rest = go_trim(line[3:])
            if rest and not rest.startswith(b"#"):
                raise Refused("invalid separator", "line %d: %r" % (lineno, line.rstrip(b"\n").decode("utf-8", "replace")))
            if buf:
                chunks.append((b"".join(buf), start))
                buf = []
                continue  # the separator that ends a document is dropped
        if not buf:
            start = lineno
        buf.append(line)
    if buf:
        chunks.append((b"".join(buf), start))
    return chunks


def is_empty_yaml(chunk: bytes) -> bool:
    """K3s pkg/deploy isEmptyYaml."""
    for line in chunk.split(b"\n"):
        s = go_trim(line)
        if s != b"---" and not s.startswith(b"#") and s != b"":
            return False
    return True


# --------------------------------------------------------------------------------------
# YAML loading with go-yaml v2 scalar resolution


T_NULL = "tag:yaml.org,2002:null"
T_BOOL = "tag:yaml.org,2002:bool"
T_INT = "tag:yaml.org,2002:int"
T_FLOAT = "tag:yaml.org,2002:float"
T_STR = "tag:yaml.org,2002:str"
T_MERGE = "tag:yaml.org,2002:merge"

# go-yaml v2 resolve.go resolveMap
_GO_MAP = {}
for _v in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"):
    _GO_MAP[_v] = T_BOOL
for _v in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"):
    _GO_MAP[_v] = T_BOOL
for _v in ("", "~", "null", "Null", "NULL"):
    _GO_MAP[_v] = T_NULL
for _v in (".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF",
           "-.inf", "-.Inf", "-.INF"):
    _GO_MAP[_v] = T_FLOAT
_GO_MAP["<<"] = T_MERGE

# strconv.ParseInt(s, 0, 64) syntax, after go-yaml removed every "_"
_GO_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)\Z")
_GO_UINT = re.compile(r"(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)\Z")
_GO_FLOAT_STYLE = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_GO_DOT_FLOAT = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?\Z")  # strconv.ParseFloat, "." first
# go-yaml v2 timestamps (kept as strings when decoding into interface{})
_GO_TS = re.compile(
    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?"
    r"(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?\Z")


def _go_int_value(s):
    sign = 1
    if s[:1] in "+-":
        if s[0] == "-":
            sign = -1
        s = s[1:]
    if len(s) > 1 and s[0] == "0":
        base = {"x": 16, "X": 16, "o": 8, "O": 8, "b": 2, "B": 2}.get(s[1])
        return sign * (int(s[2:], base) if base else int(s, 8))
    return sign * int(s)


def _finite(s):
    return math.isfinite(float(s))


def go_resolve_plain(value: str) -> str:
    """The tag go-yaml v2 gives an untagged plain scalar (decoding into interface{})."""
    if value in _GO_MAP:
        return _GO_MAP[value]
    c = value[:1]
    if c == ".":
        return T_FLOAT if _GO_DOT_FLOAT.match(value) and _finite(value) else T_STR
    if c and c in "+-0123456789":
        if _GO_TS.match(value):
            return T_STR
        plain = value.replace("_", "")
        if _GO_INT.match(plain) and -(1 << 63) <= _go_int_value(plain) < (1 << 63):
            return T_INT
        if _GO_UINT.match(plain) and _go_int_value(plain) < (1 << 64):
            return T_INT
        if _GO_FLOAT_STYLE.match(plain) and _finite(plain):  # ParseFloat fails on overflow
            return T_FLOAT
        if re.match(r"-?0b[01]+\Z", plain):
            return T_INT
    return T_STR


class _GoYamlV2:
    """Mixin for a PyYAML safe loader: scalars, tags and merge keys as go-yaml v2 reads them."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            return go_resolve_plain(value)
        return super().resolve(kind, value, implicit)

    def construct_go_int(self, node):
        plain = node.value.replace("_", "")
        try:
            return _go_int_value(plain)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, "cannot decode %r as an int" % node.value, node.start_mark)

    def construct_go_float(self, node):
        v = node.value.replace("_", "")
        low = v.lower()
        if low in (".inf", "+.inf"):
            return float("inf")
        if low == "-.inf":
            return float("-inf")
        if low == ".nan":
            return float("nan")
        try:
            return float(v)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, "cannot decode %r as a float" % node.value, node.start_mark)

    def construct_go_str(self, node):
        # timestamps, !!set, !!omap ... and unknown tags: go-yaml v2 keeps the plain value
        if isinstance(node, yaml.ScalarNode):
            return node.value
        if isinstance(node, yaml.SequenceNode):
            return self.construct_sequence(node, deep=True)
        return self.construct_mapping(node, deep=True)

    def construct_go_unknown(self, tag_suffix, node):
        return self.construct_go_str(node)

    def construct_mapping(self, node, deep=False):
        """Mapping in document order; "<<" merges overwrite what came before (go-yaml v2)."""
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, "expected a mapping node", node.start_mark)
        out = {}
        for key_node, value_node in node.value:
            if key_node.tag == T_MERGE:
                self._go_merge(value_node, out)
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "invalid map key", key_node.start_mark)
            out[key] = self.construct_object(value_node, deep=deep)
        return out

    def _go_merge(self, n, out):
        if isinstance(n, yaml.MappingNode):
            out.update(self.construct_mapping(n, deep=True))
        elif isinstance(n, yaml.SequenceNode):
            for ni in reversed(n.value):
                if not isinstance(ni, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(None, None, "map merge requires map or sequence of maps as the value", n.start_mark)
                out.update(self.construct_mapping(ni, deep=True))
        else:
            raise yaml.constructor.ConstructorError(None, None, "map merge requires map or sequence of maps as the value", n.start_mark)


def _construct_go_bool(loader, node):
    v = node.value
    if v in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"):
        return True
    if v in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"):
        return False
    raise yaml.constructor.ConstructorError(None, None, "cannot decode %r as a bool" % v, node.start_mark)


def _construct_go_binary(loader, node):
    import base64
    raw = base64.b64decode("".join(node.value.split()))
    return raw.decode("utf-8", errors="surrogateescape")


# Two parsers under the same go-yaml v2 rules.  libyaml (CSafeLoader) is what go-yaml was
# ported from and agrees with it on tabs after "---"; but libyaml skips a byte-order mark at
# the start of any line, while go-yaml (like pure-Python PyYAML) only skips one at the start
# of the stream.  So a chunk with a BOM past its first character goes to the pure parser.
class GoYamlV2Loader(_GoYamlV2, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


class GoYamlV2PureLoader(_GoYamlV2, yaml.SafeLoader):
    pass


for _cls in (GoYamlV2Loader, GoYamlV2PureLoader):
    _cls.add_constructor(T_BOOL, _construct_go_bool)
    _cls.add_constructor(T_INT, _GoYamlV2.construct_go_int)
    _cls.add_constructor(T_FLOAT, _GoYamlV2.construct_go_float)
    _cls.add_constructor("tag:yaml.org,2002:binary", _construct_go_binary)
    for _t in ("timestamp", "set", "omap", "pairs", "value"):
        _cls.add_constructor("tag:yaml.org,2002:" + _t, _GoYamlV2.construct_go_str)
    _cls.add_multi_constructor("", _GoYamlV2.construct_go_unknown)


def load_chunk(text: str, loader):
    """The first YAML document of the chunk, as go-yaml's Unmarshal reads it.

    go-yaml stops after the first document, so "..." followed by more text is not an
    error there (yaml.safe_load would say "expected a single document").
    """
    if loader is GoYamlV2Loader and BOM in text[1:]:
        loader = GoYamlV2PureLoader
    ldr = loader(text)
    try:
        if not ldr.check_node():
            return None
        return ldr.construct_document(ldr.get_node())
    finally:
        ldr.dispose()


# --------------------------------------------------------------------------------------
# Documents to objects


def has_json_prefix(chunk: bytes) -> bool:
    """apimachinery yaml.ToJSON passes JSON through: first non-space byte is "{"."""
    s = chunk.decode("utf-8", errors="surrogateescape").lstrip(GO_SPACE)
    return s.startswith("{")


def _reject_nonfinite(token):
    raise ValueError("invalid JSON number " + token)


def check_jsonable(value, where):
    """sigs.k8s.io/yaml turns go-yaml's value into JSON: some values make that fail.

    Map keys must be strings, ints that fit int64, floats or booleans (a null key, or an
    int key in the uint64-only range, is "Unsupported map key"); json.Marshal refuses NaN
    and +-Inf; go-yaml refuses an anchor whose value contains its own alias.
    """
    stack = [(value, ())]
    while stack:
        v, path = stack.pop()
        if isinstance(v, (dict, list)):
            if id(v) in path:
                raise Refused("invalid YAML", "%s: an anchor's value contains itself" % where)
            inner = path + (id(v),)
            if isinstance(v, dict):
                for k, x in v.items():
                    if k is None or (isinstance(k, int) and not isinstance(k, bool) and not -(1 << 63) <= k < (1 << 63)):
                        raise Refused("invalid YAML", "%s: unsupported map key %r" % (where, k))
                    stack.append((x, inner))
            else:
                stack.extend((x, inner) for x in v)
        elif isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise Refused("invalid YAML", "%s: JSON has no %r" % (where, v))


def decode_chunk(chunk: bytes, where: str, start: int, first: bool, loader):
    """One chunk to a Python value, or Refused."""
    if has_json_prefix(chunk):
        try:
            return json.loads(chunk.decode("utf-8", errors="replace"), parse_constant=_reject_nonfinite)
        except ValueError as e:
            raise Refused("invalid JSON", "%s: %s" % (where, e))
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused("invalid YAML", "%s: not UTF-8: %s" % (where, e))
    try:
        doc = load_chunk(text, loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None)
        if mark is not None and problem:
            msg = "file line %d column %d: %s" % (start + mark.line, mark.column + 1, problem)
        else:
            msg = " ".join(str(e).split())
        raise Refused("invalid YAML", "%s: %s" % (where, msg))
    except (ValueError, TypeError, RecursionError) as e:  # a constructor choking on a value
        raise Refused("invalid YAML", "%s: %s: %s" % (where, type(e).__name__, e))
    if doc is None:
        if first and text.startswith(BOM):
            raise Refused("bom before empty document", "%s holds only a BOM, blanks and comments" % where)
        raise Refused("empty document", "%s is null to go-yaml, so it has no kind" % where)
    check_jsonable(doc, where)
    return doc


def check_object(obj, where):
    """Identity string of one object, or Refused."""
    meta = obj.get("metadata")
    fields = (("apiVersion", obj.get("apiVersion")), ("kind", obj.get("kind")),
              ("metadata.name", meta.get("name") if isinstance(meta, dict) else None))
    for name, val in fields:
        if val is None or val == "":
            raise Refused("missing apiVersion/kind/metadata.name", "%s: no %s" % (where, name))
        if not isinstance(val, str):
            raise Refused("not a string", "%s: %s is %s %r" % (where, name, type(val).__name__, val))
    api_version, kind, name = (v for _, v in fields)
    if api_version.count("/") > 1:
        raise Refused("invalid apiVersion", "%s: %r" % (where, api_version))
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    ns = meta.get("namespace")
    if ns is not None and ns != "" and not isinstance(ns, str):
        raise Refused("not a string", "%s: metadata.namespace is %s %r" % (where, type(ns).__name__, ns))
    shown = kind + ("." + group if group else "")
    if (group, kind) in CLUSTER_SCOPED:
        return "%s %s" % (shown, name)
    return "%s %s/%s" % (shown, ns or "default", name)


def document_objects(doc, where):
    """(objects of one document, True if it was a List)."""
    if not isinstance(doc, dict):
        raise Refused("not a mapping", "%s is a %s" % (where, type(doc).__name__))
    if "items" not in doc:
        return [check_object(doc, where)], False
    list_kind = doc.get("kind")
    list_api = doc.get("apiVersion")
    if list_kind is None or list_kind == "":
        raise Refused("missing apiVersion/kind/metadata.name", "%s: List has no kind" % where)
    if not isinstance(list_kind, str):
        raise Refused("not a string", "%s: List kind is %s" % (where, type(list_kind).__name__))
    if isinstance(list_api, str) and list_api.count("/") > 1:
        raise Refused("invalid apiVersion", "%s: List apiVersion %r" % (where, list_api))
    items = doc["items"]
    if items is None:
        items = []
    if not isinstance(items, list):
        raise Refused("invalid items", "%s: items is a %s" % (where, type(items).__name__))
    item_kind = list_kind[:-4] if list_kind.endswith("List") else list_kind
    out = []
    for j, item in enumerate(items):
        item_where = "%s item %d" % (where, j + 1)
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise Refused("not a mapping", "%s is a %s" % (item_where, type(item).__name__))
        k, a = item.get("kind"), item.get("apiVersion")
        if not (isinstance(k, str) and k) and not (isinstance(a, str) and a):
            item = dict(item)
            item["kind"] = item_kind
            item["apiVersion"] = list_api if isinstance(list_api, str) else ""
        out.append(check_object(item, item_where))
    return out, True


def file_objects(data: bytes, loader):
    """(objects, lists): objects K3s applies from the file, and the List kinds expanded."""
    objects = []
    lists = []
    chunks = split_documents(data)
    for idx, (chunk, start) in enumerate(chunks):
        if is_empty_yaml(chunk):
            continue
        where = "document %d (file line %d)" % (idx + 1, start)
        doc = decode_chunk(chunk, where, start, idx == 0, loader)
        objs, was_list = document_objects(doc, where)
        if was_list:
            lists.append("%s(%d)" % (doc.get("kind"), len(objs)))
        objects.extend(objs)
    return objects, lists


def evaluate(data: bytes, loader=GoYamlV2Loader):
    try:
        objects, lists = file_objects(data, loader)
        return {"objects": objects}, lists, None
    except Refused as r:
        return {"refused": r.reason}, [], r.detail


def corpus_files():
    found = []
    for root, dirs, files in os.walk(HERE):
        dirs.sort()
        for f in files:
            if f.endswith((".yaml", ".yml")):
                found.append(os.path.relpath(os.path.join(root, f), HERE).replace(os.sep, "/"))
    return sorted(found)


def main():
    result = {}
    lists = {}
    details = {}
    disagreements = []
    plain_loader = yaml.SafeLoader  # exactly what yaml.safe_load uses
    for rel in corpus_files():
        with open(os.path.join(HERE, rel), "rb") as fh:
            data = fh.read()
        res, lst, detail = evaluate(data)
        result[rel] = res
        if lst:
            lists[rel] = lst
        if detail:
            details[rel] = detail
        # cross-check: the same rules with plain yaml.safe_load resolution
        plain, _, _ = evaluate(data, plain_loader)
        if plain != res:
            disagreements.append(rel)

    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")

    n_obj = sum(len(v.get("objects", [])) for v in result.values())
    refused = {k: v["refused"] for k, v in result.items() if "refused" in v}
    dups = {}
    for k, v in result.items():
        seen = set()
        for o in v.get("objects", []):
            if o in seen:
                dups.setdefault(k, []).append(o)
            seen.add(o)
    print("files: %d" % len(result))
    print("objects: %d (in %d files)" % (n_obj, len(result) - len(refused)))
    print("refused: %d" % len(refused))
    for k in sorted(refused):
        print("  %s: %s (%s)" % (k, refused[k], details.get(k, "")))
    print("List expansion: %d files" % len(lists))
    for k in sorted(lists):
        print("  %s: %s" % (k, ", ".join(lists[k])))
    print("duplicate objects: %s" % (", ".join("%s: %s" % (k, v) for k, v in sorted(dups.items())) or "none"))
    print("go-yaml v2 vs plain yaml.safe_load disagreements: %s" % (", ".join(disagreements) or "none"))
    print("wrote %s" % os.path.relpath(OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
