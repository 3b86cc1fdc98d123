#!/usr/bin/env python3
"""An independent reader of a sync-agent local store, written from FORMAT.md alone.

    format_reader.py --store DIR (--key KEYS | --key-file FILE) --session ID --out DIR [--snapshot SEQ.GEN]
    format_reader.py --self-test

Walks the session's head and committed history, decrypts, decompresses and unpacks every object
of the chain, checks every content id, the manifests against their keys and the state digest,
and writes the rebuilt session directory to --out (files 0600, directories 0700). Prints one
JSON object: {"state": "restored" | "tombstone" | "no-snapshot", "chain": ["SEQ.GEN.kind", ...],
"keyIDs": [the key id that opened each], "stateKeyIDs": [the key ids of the content ids of the
rebuilt state], "files": N, "bytes": N, "stateDigest": "...", "formatVersions": [each manifest's]}. Any failure: one line on standard
error, exit status 1, and nothing written to --out.

--self-test checks the key derivation and decrypts the worked example of FORMAT.md.

It is stricter than FORMAT.md asks a reader to be: it also checks that the agent wrote the bytes
exactly as the document spells them (every ustar field, one zstd frame, the JSON spelling, the
head's fields, what a tombstone holds), so that the document stays exact.

Section names in comments are FORMAT.md's. Needs pynacl (secretstream) and zstandard; BLAKE2b and
SHA-256 come from hashlib. Objects are read whole into memory: this is a checker, not a restorer
for large sessions. Names are expected to be UTF-8 (see FORMAT.md, "Paths").
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import struct
import sys

import nacl.bindings as sodium
import zstandard


class FormatError(Exception):
    """The store does not follow FORMAT.md; the message says where."""


# --- Encrypted container: Keys ---------------------------------------------------------------

KDF_CONTEXT = b"syncagnt"


def parse_master_key(text):
    """A master key in any of the documented text forms."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    alphabet = text.replace("-", "+").replace("_", "/")
    if len(alphabet) == 43:
        alphabet += "="
    if len(alphabet) == 44 and re.fullmatch(r"[A-Za-z0-9+/]{43}=", alphabet):
        key = base64.b64decode(alphabet, validate=True)
        if len(key) == 32:
            return key
    raise FormatError("a key is neither 64 hex digits nor base64 of 32 bytes")


def parse_key_list(entries):
    """Entries of SESSION_ENCRYPTION_KEY or lines of a key file: blanks and '#' entries skipped."""
    return [parse_master_key(entry) for entry in entries if entry.strip() and not entry.strip().startswith("#")]


def derive_subkey(master_key, subkey_id, length):
    """crypto_kdf_derive_from_key as libsodium 1.0.18 computes it: keyed BLAKE2b of nothing."""
    salt = struct.pack("<Q", subkey_id) + bytes(8)
    personal = KDF_CONTEXT + bytes(8)
    return hashlib.blake2b(b"", digest_size=length, key=master_key, salt=salt, person=personal).digest()


class Key:
    def __init__(self, master_key):
        self.stream_key = derive_subkey(master_key, 1, 32)
        self.content_id_key = derive_subkey(master_key, 2, 32)
        self.key_id = derive_subkey(master_key, 3, 16)[:8]

    def content_id(self, content):
        """Content ids: BLAKE2b-256 keyed with the content-id subkey, as lowercase hex."""
        return hashlib.blake2b(content, digest_size=32, key=self.content_id_key).hexdigest()


# --- Encrypted container: Object layout, Associated data, Reading ----------------------------

MAGIC = b"SYNCAENC"
HEADER_BYTES = 41
PIECE_BYTES = 65536
ABYTES = 17


def u32be(value):
    return struct.pack(">I", value)


def decrypt(obj, keys, session_id, object_name):
    """The plaintext of an object and the key that opened it, following "Reading" step by step."""
    what = f"{session_id}/{object_name}"
    if obj[: len(MAGIC)] != MAGIC[: len(obj)]:
        raise FormatError(f"{what}: not an encrypted object")
    if len(obj) > 8 and obj[8] != 1:
        raise FormatError(f"{what}: unsupported container version {obj[8]}")
    if len(obj) < HEADER_BYTES:
        raise FormatError(f"{what}: truncated header")
    header = obj[:HEADER_BYTES]
    key = next((k for k in keys if k.key_id == header[9:17]), None)
    if key is None:
        raise FormatError(f"{what}: unknown key id {header[9:17].hex()}")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header[17:41], key.stream_key)
    session_bytes, name_bytes = session_id.encode(), object_name.encode()
    ad = header + u32be(len(session_bytes)) + session_bytes + u32be(len(name_bytes)) + name_bytes
    position, plaintext = HEADER_BYTES, []
    while True:
        if position + 4 > len(obj):
            raise FormatError(f"{what}: truncated (no final chunk)")
        (length,) = struct.unpack(">I", obj[position : position + 4])
        position += 4
        if length < ABYTES or length > PIECE_BYTES + ABYTES:
            raise FormatError(f"{what}: tampered (chunk length {length})")
        if position + length > len(obj):
            raise FormatError(f"{what}: truncated chunk")
        try:
            piece, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, obj[position : position + length], ad)
        except Exception:
            raise FormatError(f"{what}: tampered (a chunk fails authentication)") from None
        position += length
        if tag == sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE and len(piece) == PIECE_BYTES:
            plaintext.append(piece)
        elif tag == sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL:
            if position != len(obj):
                raise FormatError(f"{what}: tampered (bytes after the final chunk)")
            plaintext.append(piece)
            return b"".join(plaintext), key
        else:
            raise FormatError(f"{what}: tampered (tag {tag}, piece of {len(piece)} bytes)")


# --- Payload: Compression layer --------------------------------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def decompress(payload, what):
    """The writer's one frame: streaming mode (no content size), no checksum, nothing after it."""
    if payload[:4] != ZSTD_MAGIC:
        raise FormatError(f"{what}: the payload does not start with a zstd frame")
    descriptor = payload[4] if len(payload) > 4 else 0
    if descriptor >> 6 != 0 or descriptor >> 5 & 1 or descriptor >> 2 & 1:
        raise FormatError(f"{what}: frame header descriptor {descriptor:#04x} has a content size or checksum")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        data = decompressor.decompress(payload)
    except zstandard.ZstdError as error:
        raise FormatError(f"{what}: bad zstd data: {error}") from None
    if not decompressor.eof or decompressor.unused_data:
        raise FormatError(f"{what}: the payload is not exactly one zstd frame")
    return data


# --- Payload: Tar layer ----------------------------------------------------------------------

def octal_field(value, digits, terminator):
    return b"%0*o" % (digits, value) + terminator


def check_ustar_header(block, what):
    """Every field as the table of "Tar layer" spells it; returns (path from name/prefix, typeflag, size)."""
    def field(offset, size):
        return block[offset : offset + size]

    typeflag = field(156, 1)
    size = int(field(124, 11), 8)
    expected = {
        "mode": (100, 8, b"000700 \0" if typeflag == b"5" else b"000600 \0"),
        "uid": (108, 8, b"000000 \0"),
        "gid": (116, 8, b"000000 \0"),
        "size": (124, 12, octal_field(size, 11, b" ")),
        "mtime": (136, 12, b"00000000000 "),
        "linkname": (157, 100, bytes(100)),
        "magic": (257, 6, b"ustar\0"),
        "version": (263, 2, b"00"),
        "uname": (265, 32, bytes(32)),
        "gname": (297, 32, bytes(32)),
        "devmajor": (329, 8, b"000000 \0"),
        "devminor": (337, 8, b"000000 \0"),
        "padding": (500, 12, bytes(12)),
    }
    for name, (offset, length, value) in expected.items():
        if field(offset, length) != value:
            raise FormatError(f"{what}: header field {name} is {field(offset, length)!r}, FORMAT.md says {value!r}")
    checksum = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if field(148, 8) != octal_field(checksum, 6, b"\0 "):
        raise FormatError(f"{what}: header checksum {field(148, 8)!r}, expected {checksum:o}")
    if typeflag not in (b"0", b"5", b"x"):
        raise FormatError(f"{what}: typeflag {typeflag!r}")
    name = field(0, 100).rstrip(b"\0")
    prefix = field(345, 155).rstrip(b"\0")
    return (prefix + b"/" + name if prefix else name), typeflag, size


def read_tar(data, what):
    """The entries of a tar as (path, contents), checking the raw headers against "Tar layer"."""
    entries, position, pax_path = [], 0, None
    while True:
        block = data[position : position + 512]
        if len(block) < 512:
            raise FormatError(f"{what}: the tar ends without its end-of-archive marker")
        if block == bytes(512):
            if data[position + 512 : position + 1024] != bytes(512):
                raise FormatError(f"{what}: only one zero block at the end")
            if pax_path is not None:
                raise FormatError(f"{what}: a pax header is followed by nothing")
            if position + 1024 != len(data):
                raise FormatError(f"{what}: {len(data) - position - 1024} bytes after the end-of-archive marker")
            return entries
        path, typeflag, size = check_ustar_header(block, what)
        contents = data[position + 512 : position + 512 + size]
        if len(contents) < size:
            raise FormatError(f"{what}: truncated entry {path!r}")
        padding = data[position + 512 + size : position + 512 + (size + 511) // 512 * 512]
        if padding != bytes(len(padding)):
            raise FormatError(f"{what}: non-NUL padding after {path!r}")
        position += 512 + (size + 511) // 512 * 512
        if typeflag == b"x":
            # One record, "<len> path=<path>\n", as "Tar layer" says the writer makes it.
            match = re.fullmatch(rb"(\d+) path=([^\n]*)\n", contents)
            if not match or int(match.group(1)) != len(contents):
                raise FormatError(f"{what}: pax header {contents!r} is not one path record")
            pax_path = match.group(2)
            continue
        if typeflag != b"0":
            raise FormatError(f"{what}: entry {path!r} is not a regular file")
        if pax_path is not None:
            path, pax_path = pax_path, None
        entries.append((path.decode("utf-8"), contents))


# --- Snapshots and heads ---------------------------------------------------------------------

SNAPSHOT_NAME = re.compile(r"(\d{20})-(\d{10,})-([0-9a-f]{16})(?:-([0-9a-f]{16}))?\.(base|delta|tombstone)")


class Snapshot:
    """One snapshot object as its key and the store's listing show it."""

    def __init__(self, sequence, generation, tag, parent_tag, kind, written):
        self.sequence, self.generation, self.tag = sequence, generation, tag
        self.parent_tag, self.kind, self.written = parent_tag, kind, written

    @property
    def name(self):
        parent = f"-{self.parent_tag}" if self.parent_tag else ""
        return f"snapshots/{self.sequence:020d}-{self.generation:010d}-{self.tag}{parent}.{self.kind}"

    @property
    def label(self):
        return f"{self.sequence}.{self.generation}"

    def id(self):
        return {"generation": self.generation, "sequence": self.sequence, "tag": self.tag}


# --- Keyed names ----------------------------------------------------------------------------

KEYED_NAME_LABEL = b"sync-agent keyed name 1\n"


def naming_secret(store, keys):
    """The store's naming secret from the wrap of a configured key (naming/<key id>); None when the
    store holds no wrap (format version 2)."""
    directory = os.path.join(store, "naming")
    wraps = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    if not wraps:
        return None
    secrets = set()
    for key in keys:
        name = key.key_id.hex()
        if name in wraps:
            with open(os.path.join(directory, name), "rb") as file:
                secret, _ = decrypt(file.read(), [key], "", "naming/" + name)
            if len(secret) != 32:
                raise FormatError(f"naming/{name} holds {len(secret)} bytes, not a 32-byte secret")
            secrets.add(secret)
    if len(secrets) != 1:
        raise FormatError(f"naming/ holds {sorted(wraps)}: {'no wrap for a configured key' if not secrets else 'secrets that differ'}")
    return secrets.pop()


def keyed_id(secret, domain, name):
    """BLAKE2b-128 keyed with the naming secret over label ‖ u32be(len(domain)) ‖ domain ‖ u32be(len(name)) ‖ name."""
    message = KEYED_NAME_LABEL + u32be(len(domain)) + domain + u32be(len(name)) + name
    return hashlib.blake2b(message, digest_size=16, key=secret).hexdigest()


def session_place(store, keys, session_id):
    """(the component after sessions/, the session id bound into the head): the keyed id when its
    head is there, else the session's own name (format version 2, or a move not finished)."""
    secret = naming_secret(store, keys)
    if secret is not None:
        component = keyed_id(secret, b"session", session_id.encode())
        if os.path.exists(os.path.join(store, "sessions", component, "head")):
            return component, component
    return session_id, session_id


def list_snapshots(store, place):
    """Objects under sessions/<place>/snapshots/ in exactly the documented spelling, with the time the
    store lists them as written (the file's mtime, as a float of seconds)."""
    directory = os.path.join(store, "sessions", place, "snapshots")
    snapshots = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        match = SNAPSHOT_NAME.fullmatch(name)
        if not match:
            continue
        snapshot = Snapshot(int(match.group(1)), int(match.group(2)), match.group(3), match.group(4), match.group(5),
                            os.stat(os.path.join(directory, name)).st_mtime_ns / 1e9)
        if snapshot.name == "snapshots/" + name:
            snapshots.append(snapshot)
    return snapshots


def committed_history(snapshots, head):
    """"The committed history": (the head's latest, {sequence: snapshot}), walked through parent tags."""
    latest_id = head["latest"]
    by_link = {(s.sequence, s.tag): s for s in snapshots}
    latest = by_link.get((latest_id["sequence"], latest_id["tag"]))
    if latest is None or latest.generation != latest_id["generation"]:
        raise FormatError(f"the head names snapshot {latest_id}, which is not in the store")
    history, child = {latest.sequence: latest}, latest
    while child.parent_tag is not None and child.sequence > 0:
        parent = by_link.get((child.sequence - 1, child.parent_tag))
        if parent is None:
            # A pruned link: the highest sequence below, generation <= the head's, written no later
            # than the child; then the highest generation, then the greatest tag.
            candidates = [s for s in snapshots if s.sequence < child.sequence - 1
                          and s.generation <= head["generation"] and not s.written > child.written]
            if not candidates:
                break
            parent = max(candidates, key=lambda s: (s.sequence, s.generation, s.tag))
        history[parent.sequence] = parent
        child = parent
    return latest, history


def chain_to(target, history):
    """"Restoring the snapshot T": back through the history while the kind is delta, base first."""
    chain = [target]
    while chain[-1].kind == "delta":
        link = chain[-1]
        previous = history.get(link.sequence - 1)
        if previous is None or previous.tag != link.parent_tag:
            raise FormatError(f"the chain to {target.label} has a gap before {link.sequence}")
        chain.append(previous)
    return list(reversed(chain))


MAX_LINE = 65536
SECOND_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
FORMAT_VERSIONS = (2, 3, 4)


def check_spelling(line, value, what):
    """Keys sorted, no whitespace, "/" written "\\/" (names with \\u escapes are not compared)."""
    if b"\\u" in line:
        return
    spelled = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")
    if spelled.encode() != line:
        raise FormatError(f"{what}: {line[:200]!r} is not spelled as FORMAT.md says ({spelled[:200]!r})")


def read_manifest(data, what):
    """The manifest's JSON Lines: a header, fileCount file lines, deletedCount deleted lines."""
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise FormatError(f"{what}: the manifest's last line has no newline")
    lines = lines[:-1]
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise FormatError(f"{what}: manifest line {number} is longer than {MAX_LINE} bytes")
    if not lines:
        raise FormatError(f"{what}: the manifest is empty")
    header = json.loads(lines[0])
    if header.get("formatVersion") not in FORMAT_VERSIONS:
        raise FormatError(f"{what}: unsupported format version {header.get('formatVersion')}")
    if not SECOND_DATE.fullmatch(header["createdAt"]):
        raise FormatError(f"{what}: createdAt {header['createdAt']!r}")
    file_count, deleted_count = header["fileCount"], header["deletedCount"]
    if len(lines) != 1 + file_count + deleted_count:
        raise FormatError(f"{what}: {len(lines)} manifest lines, the header declares {1 + file_count + deleted_count}")
    files = [json.loads(line) for line in lines[1 : 1 + file_count]]
    deleted = [json.loads(line)["deleted"] for line in lines[1 + file_count :]]
    for line in lines:
        check_spelling(line, json.loads(line), what)
    for names in ([f["name"] for f in files], deleted):
        encoded = [name.encode() for name in names]
        if any(a >= b for a, b in zip(encoded, encoded[1:])):
            raise FormatError(f"{what}: manifest names repeat or are out of byte order")
    for record in files:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", record["contentID"]) or not isinstance(record["size"], int):
            raise FormatError(f"{what}: file line {record!r}")
        fingerprint = record.get("fingerprint")
        if fingerprint is not None and (set(fingerprint) != {"device", "inode", "mode", "modificationTime", "size"}
                                        or not 0 <= fingerprint["mode"] <= 0o7777):
            raise FormatError(f"{what}: fingerprint {fingerprint!r} is not as FORMAT.md describes it")
    return header, files, deleted


def read_snapshot(store, keys, session_id, place, snapshot, previous_id):
    """Decrypts and unpacks one snapshot object; returns (manifest header, {name: (contents, contentID,
    key id)}, deleted, the key id that opened it)."""
    what = f"{session_id}/{snapshot.name}"
    with open(os.path.join(store, "sessions", place, snapshot.name), "rb") as file:
        payload, key = decrypt(file.read(), keys, session_id, snapshot.name)
    entries = read_tar(decompress(payload, what), what)
    if not entries or entries[-1][0] != "manifest.jsonl":
        raise FormatError(f"{what}: manifest.jsonl is not the last entry")
    header, files, deleted = read_manifest(entries[-1][1], what)
    archived = entries[:-1]
    if any(not path.startswith("files/") for path, _ in archived):
        raise FormatError(f"{what}: an entry outside files/")
    if [path[len("files/"):] for path, _ in archived] != [record["name"] for record in files]:
        raise FormatError(f"{what}: the archive's files are not the manifest's file lines")
    contents = {}
    for (_, content), record in zip(archived, files):
        if len(content) != record["size"] or key.content_id(content) != record["contentID"].lower():
            raise FormatError(f"{what}: {record['name']} does not match its content id")
        contents[record["name"]] = (content, record["contentID"].lower(), key.key_id.hex())
    if (header["session"] != session_id or header["id"] != snapshot.id() or header["kind"] != snapshot.kind
            or (header.get("parent") or {}).get("tag") != snapshot.parent_tag
            or (header.get("parent") is not None and header["parent"]["sequence"] + 1 != snapshot.sequence)):
        raise FormatError(f"{what}: the manifest names another snapshot")
    if snapshot.kind == "delta" and header.get("parent") != previous_id:
        raise FormatError(f"{what}: its parent is not the snapshot before it in the chain")
    if snapshot.kind != "delta" and deleted:
        raise FormatError(f"{what}: a {snapshot.kind} with deleted lines")
    if snapshot.kind == "tombstone" and (len(entries) != 1 or (header["fileCount"], header["deletedCount"],
            header["stateFileCount"], header["stateByteCount"], header["stateDigest"])
            != (0, 0, 0, 0, state_digest({}, header["formatVersion"]))):
        raise FormatError(f"{what}: a tombstone is not as FORMAT.md describes it: {header}")
    return header, contents, deleted, key.key_id.hex()


def state_digest(state, format_version):
    """"stateDigest" of {name: (contents, lowercase contentID, key id)} by the rule of a manifest of
    format_version. Each file's line is name ‖ 0 ‖ decimal size ‖ 0 ‖ lowercase contentID.
    Version 4: the sum modulo 2^256 of the lines' SHA-256 read as little-endian integers, written
    as 32 bytes little-endian. Versions 2 and 3: SHA-256 over the lines, each followed by "\\n",
    in byte order of the names."""
    lines = {name: name.encode() + b"\0" + str(len(content)).encode() + b"\0" + content_id.encode()
             for name, (content, content_id, _) in state.items()}
    if format_version == 4:
        total = sum(int.from_bytes(hashlib.sha256(line).digest(), "little") for line in lines.values())
        return (total % 2**256).to_bytes(32, "little").hex()
    digest = hashlib.sha256()
    for name in sorted(lines, key=lambda n: n.encode()):
        digest.update(lines[name] + b"\n")
    return digest.hexdigest()


def read_head(store, keys, session_id, place, bound):
    with open(os.path.join(store, "sessions", place, "head"), "rb") as file:
        plaintext, _ = decrypt(file.read(), keys, bound, "head")
    head = json.loads(plaintext)
    if head.get("formatVersion") not in FORMAT_VERSIONS:
        raise FormatError(f"the head has unsupported format version {head.get('formatVersion')}")
    if head["formatVersion"] >= 3 and head.get("session") != session_id:
        raise FormatError(f"the head names session {head.get('session')!r}")
    check_spelling(plaintext, head, "the head")
    fields = {"formatVersion", "generation", "owner", "updatedAt"} | ({"session"} if head["formatVersion"] >= 3 else set())
    if "latest" in head:
        fields |= {"latest", "latestKind"} | ({"base", "identityHold"} & head.keys())
    fields |= {"agent", "released"} & head.keys()  # "Leases and handoff"
    if set(head) != fields or not SECOND_DATE.fullmatch(head["updatedAt"]):
        raise FormatError(f"the head's fields are not FORMAT.md's: {sorted(head)}")
    if "agent" in head and not (isinstance(head["agent"], str) and 1 <= len(head["agent"].encode()) <= 256):
        raise FormatError(f"the head's agent {head['agent']!r} is not an agent id")
    released = head.get("released")
    if released is not None and not ({"at"} <= set(released) <= {"at", "snapshot"} and SECOND_DATE.fullmatch(released["at"])):
        raise FormatError(f"the head's released {released!r} is not as FORMAT.md describes it")
    hold = head.get("identityHold")
    if hold is not None and (set(hold) != {"since", "snapshot"} or not SECOND_DATE.fullmatch(hold["since"])):
        raise FormatError(f"the head's identityHold {hold!r} is not as FORMAT.md describes it")
    if not re.fullmatch(r"[^/]*/\d+/\d+", head["owner"]):
        raise FormatError(f"the head's owner {head['owner']!r} is not <host>/<pid>/<number>")
    return head


def check_head_against_history(head, latest, history):
    """"The head": latestKind is the latest's kind; base the newest committed base, which a
    tombstone does not change; after a tombstone comes a base; an identity hold names a committed
    snapshot below the latest, and never beside a tombstone."""
    if head["latestKind"] != latest.kind:
        raise FormatError(f"the head says latestKind {head['latestKind']}, its latest is a {latest.kind}")
    hold = head.get("identityHold")
    if hold is not None and (latest.kind == "tombstone" or hold["snapshot"]["sequence"] >= latest.sequence
                             or hold["snapshot"] not in [s.id() for s in history.values()]):
        raise FormatError(f"the head's identityHold names {hold['snapshot']}, not a committed snapshot before its latest")
    bases = [s for s in history.values() if s.kind == "base"]
    newest_base = max(bases, key=lambda s: s.sequence).id() if bases else None
    # With no base left in the history, one may have been pruned; with the history whole, there was none.
    if (newest_base is not None or 1 in history) and head.get("base") != newest_base:
        raise FormatError(f"the head's base {head.get('base')} is not the newest committed base {newest_base}")
    for snapshot in history.values():
        before = history.get(snapshot.sequence - 1)
        if before is not None and before.kind == "tombstone" and snapshot.kind != "base":
            raise FormatError(f"{snapshot.label} follows a tombstone and is a {snapshot.kind}")


STORE_OWN_NAMES = {".lock", ".tmp", ".sync-agent-key", ".state"}


def check_store_root(store, keys):
    """A local store's root holds `sessions/`, `naming/`, `agents/` and only the store's own names besides."""
    unexpected = set(os.listdir(store)) - STORE_OWN_NAMES - {"sessions", "naming", "agents"}
    if unexpected:
        raise FormatError(f"the store root holds {sorted(unexpected)}, which FORMAT.md does not name")
    agents = os.path.join(store, "agents")
    for lease_id in sorted(os.listdir(agents)) if os.path.isdir(agents) else []:
        read_lease(store, keys, lease_id)


def read_lease(store, keys, lease_id):
    """"Leases and handoff": the lease's key is the keyed hash of the agent id it holds."""
    name = f"agents/{lease_id}/lease"
    if os.listdir(os.path.join(store, "agents", lease_id)) != ["lease"]:
        raise FormatError(f"agents/{lease_id} holds more than its lease")
    with open(os.path.join(store, name), "rb") as file:
        plaintext, key = decrypt(file.read(), keys, "", name)
    lease = json.loads(plaintext)
    check_spelling(plaintext, lease, "the lease")
    if set(lease) != {"formatVersion", "agent", "instance", "renewal", "ttlMilliseconds", "renewedAt"} or lease["formatVersion"] != 1:
        raise FormatError(f"the lease's fields are not FORMAT.md's: {sorted(lease)}")
    if not SECOND_DATE.fullmatch(lease["renewedAt"]) or lease["renewal"] < 1 or lease["ttlMilliseconds"] < 1:
        raise FormatError(f"the lease {lease!r} is not as FORMAT.md describes it")
    secret = naming_secret(store, keys)
    expected = keyed_id(secret, b"agent", lease["agent"].encode()) if secret is not None else None
    if expected != lease_id:
        raise FormatError(f"the lease of {lease['agent']!r} is at agents/{lease_id}, not agents/{expected}")
    return lease


def rebuild(store, keys, session_id, label=None):
    """The session as of the head's latest (or the committed snapshot SEQ.GEN): (result, state)."""
    check_store_root(store, keys)
    place, bound = session_place(store, keys, session_id)
    head = read_head(store, keys, session_id, place, bound)
    if "latest" not in head:
        return {"state": "no-snapshot", "chain": []}, {}
    target, history = committed_history(list_snapshots(store, place), head)
    check_head_against_history(head, target, history)
    if label is not None:
        target = next((s for s in history.values() if s.label == label), None)
        if target is None:
            raise FormatError(f"no committed snapshot {label}")
    chain = chain_to(target, history)
    state, previous_id, last_header, key_ids, versions = {}, None, None, [], []
    for snapshot in chain:
        header, contents, deleted, key_id = read_snapshot(store, keys, session_id, place, snapshot, previous_id)
        key_ids.append(key_id)
        versions.append(header["formatVersion"])
        if snapshot.kind == "base":
            state = dict(contents)
        elif snapshot.kind == "tombstone":
            state = {}
        else:
            for name in deleted:
                state.pop(name, None)
            state.update(contents)
        # Stricter than FORMAT.md asks (it checks the last): every manifest of the chain describes
        # the state rebuilt up to it, its digest by its own version's rule.
        if (state_digest(state, header["formatVersion"]), len(state), sum(len(c) for c, _, _ in state.values())) != (
                header["stateDigest"], header["stateFileCount"], header["stateByteCount"]):
            raise FormatError(f"the rebuilt session does not match snapshot {snapshot.label}'s manifest")
        previous_id, last_header = snapshot.id(), header
    result = {"chain": [s.label + "." + s.kind for s in chain], "keyIDs": key_ids, "files": len(state),
              "stateKeyIDs": sorted({key_id for _, _, key_id in state.values()}),
              "bytes": sum(len(content) for content, _, _ in state.values()),
              "stateDigest": last_header["stateDigest"], "formatVersions": versions}
    if chain[-1].kind == "tombstone":
        if "identity" in last_header:
            raise FormatError(f"tombstone {target.label} records an identity")
        return dict(result, state="tombstone"), {}
    if "identity" in last_header:
        check_identity(last_header["identity"], state, keys, f"{session_id}/{target.label}")
        result["registered"] = last_header["identity"]["registered"]
    return dict(result, state="restored"), state


# --- Session identity ------------------------------------------------------------------------

IDENTITY_DOMAIN = b"sync-agent session identity 1\n"


def baileys_bytes(value):
    """Baileys' {"type":"Buffer","data": base64 or byte values}, or None."""
    if not isinstance(value, dict) or value.get("type") != "Buffer":
        return None
    data = value.get("data")
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error:
            return None
    if isinstance(data, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in data):
        return bytes(data)
    return None


def creds_identity(content, keys):
    """"Session identity": what a manifest must record for this creds.json (None: the file is absent)."""
    if content is None:
        return {"authState": "missing", "registered": False}
    if not content or len(content) > 1 << 20:
        return {"authState": "unparsable", "registered": False}
    try:
        creds = json.loads(content)
    except ValueError:
        return {"authState": "unparsable", "registered": False}
    incomplete = {"authState": "incomplete", "registered": False}

    def pair(value):
        return (isinstance(value, dict) and len(baileys_bytes(value.get("private")) or b"") == 32
                and len(baileys_bytes(value.get("public")) or b"") in (32, 33))

    if not isinstance(creds, dict):
        return incomplete
    pre_key = creds.get("signedPreKey")
    me = creds.get("me")
    if me is not None and not isinstance(me, dict):
        return incomplete
    account_id = me.get("id") if me is not None else None
    valid = (pair(creds.get("noiseKey")) and pair(creds.get("signedIdentityKey"))
             and isinstance(pre_key, dict) and pair(pre_key.get("keyPair"))
             and len(baileys_bytes(pre_key.get("signature")) or b"") == 64 and type(pre_key.get("keyId")) is int
             and type(creds.get("registrationId")) is int and creds["registrationId"] > 0
             and isinstance(creds.get("advSecretKey"), str))
    if valid:
        try:
            valid = len(base64.b64decode(creds["advSecretKey"], validate=True)) == 32
        except binascii.Error:
            valid = False
    if me is not None and not isinstance(account_id, str):
        valid = False
    if valid and account_id:
        account = creds.get("account")
        valid = isinstance(account, dict) and all(
            baileys_bytes(account.get(field)) is not None
            for field in ("details", "accountSignatureKey", "accountSignature", "deviceSignature"))
    if not valid:
        return incomplete
    return {"authState": "valid", "registered": bool(account_id), "material": (
        baileys_bytes(creds["noiseKey"]["public"]), baileys_bytes(creds["signedIdentityKey"]["public"]),
        (account_id or "").encode())}


def check_identity(recorded, state, keys, what):
    """A manifest's identity describes the rebuilt session's creds.json, its fingerprint keyed by keyID's key."""
    expected = creds_identity(state["creds.json"][0] if "creds.json" in state else None, keys)
    fields = {"authState", "registered"} | ({"fingerprint", "keyID"} if expected["authState"] == "valid" else set())
    if set(recorded) != fields or (recorded["authState"], recorded["registered"]) != (expected["authState"], expected["registered"]):
        raise FormatError(f"{what}: identity {recorded.get('authState')}/{recorded.get('registered')} does not describe creds.json "
                          f"({expected['authState']}/{expected['registered']})")
    if "fingerprint" in fields:
        key = next((k for k in keys if k.key_id.hex() == recorded["keyID"]), None)
        if key is None:
            return  # keyed by a key this reader was not given: nothing to compare it with
        message = IDENTITY_DOMAIN + b"".join(u32be(len(part)) + part for part in expected["material"])
        if hashlib.blake2b(message, digest_size=32, key=key.content_id_key).hexdigest() != recorded["fingerprint"]:
            raise FormatError(f"{what}: the identity's fingerprint is not creds.json's")


def put_databases_together(state):
    """"SQLite databases": the pages `<name>/.sqlite-page/<10 digits>` of a database become the one
    file `<name>`, pages 1 to n without a gap."""
    files, pages = {}, {}
    for name, value in state.items():
        head, _, number = name.rpartition("/.sqlite-page/")
        if head and len(number) == 10 and number.isdigit() and int(number) >= 1:
            pages.setdefault(head, {})[int(number)] = value[0]
        else:
            files[name] = value
    for name, numbered in pages.items():
        if name in files or sorted(numbered) != list(range(1, len(numbered) + 1)):
            raise FormatError(f"the database {name}'s pages are not 1 to {len(numbered)}, or it is also a file")
        files[name] = (b"".join(numbered[index] for index in sorted(numbered)), None, None)
    return files


def write_tree(state, out):
    """"Restoring": files 0600, directories 0700."""
    os.makedirs(out, mode=0o700, exist_ok=False)
    for name, (content, _, _) in sorted(put_databases_together(state).items()):
        path = os.path.join(out, *name.split("/"))
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.chmod(path, 0o600)


# --- Worked example --------------------------------------------------------------------------

def self_test():
    key = Key(bytes(range(32)))
    assert key.stream_key.hex() == "90bb6743d2022e5e9b3f97b63e2d7107aef080d81d23bdea81b5c31e79c0eff7"
    assert key.content_id_key.hex() == "31c72d92ab5b1ce45829035cec5f50531e6b9eb1cf7f02dc778b9eb0bc46cb24"
    assert derive_subkey(bytes(range(32)), 3, 16).hex() == "2119518612db27635d7c0e0e832595ac"
    assert key.key_id.hex() == "2119518612db2763"
    assert parse_master_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=") == bytes(range(32))
    example = binascii.unhexlify(
        "53594e4341454e43" "01" "2119518612db2763" "7362388a116a1536c35b34bd9cca7958aaf85f5c03ebe71c"
        "00000014" "113fda63dfb5c52d9db14549b1558577a1a9e5e8")
    plaintext, _ = decrypt(example, [key], "s1", "snap/1.manifest")
    assert plaintext == b"hi\n", plaintext
    assert key.content_id(b"hi\n") == "36eb393892dfe0d7e4818586d5136d5c97a4db40bfac8a8451138b8bed7f33a5"
    assert keyed_id(bytes(range(32)), b"session", b"4915112345678") == "86f15cd681534aeea6b4d38cd5f0233e"
    assert keyed_id(bytes(range(32)), b"agent", b"worker-1") == "94622e189c9beebcb475084437afe39a"
    example_state = {"creds.json": (b"abc", "ab" * 32, None), "keys/a\n.json": (b"", "0" * 64, None)}
    assert state_digest(example_state, 4) == "ce0a9c3941b15bb874821266c3b7b12914a6db3a3a7a3c0511b2c5889bb65b32"
    assert state_digest({}, 4) == "0" * 64
    assert state_digest({}, 3) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    print(json.dumps({"selfTest": "passed"}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store")
    parser.add_argument("--key", help="keys as SESSION_ENCRYPTION_KEY holds them (comma-separated)")
    parser.add_argument("--key-file")
    parser.add_argument("--session")
    parser.add_argument("--out")
    parser.add_argument("--snapshot", help="a committed snapshot SEQUENCE.GENERATION instead of the head's latest")
    parser.add_argument("--self-test", action="store_true")
    arguments = parser.parse_args()
    try:
        if arguments.self_test:
            self_test()
            return 0
        if not (arguments.store and arguments.session and arguments.out and (arguments.key or arguments.key_file)):
            parser.error("--store, --session, --out and --key or --key-file are required")
        keys = []
        if arguments.key_file:
            with open(arguments.key_file) as file:
                keys += parse_key_list(file.read().split("\n"))
        if arguments.key:
            keys += parse_key_list(arguments.key.split(","))
        result, state = rebuild(arguments.store, [Key(k) for k in keys], arguments.session, arguments.snapshot)
        if result["state"] == "restored":
            write_tree(state, arguments.out)
        print(json.dumps(result, sort_keys=True))
        return 0
    except (FormatError, OSError, ValueError, KeyError, TypeError) as error:
        print(f"format_reader: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
