//! The wire schema only grows. The released shape of `proto/hodei/v1` is recorded in
//! `proto/hodei/v1/snapshot.txt`, one line per field, enum value and method; removing,
//! renumbering, renaming or retyping any of them fails this test. New fields fail too until
//! the snapshot records them: run `UPDATE_PROTO_SNAPSHOT=1 cargo test -p hodei-proto --test
//! wire_compat` and commit the snapshot with the change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn compile(root: &Path) -> FileDescriptorSet {
    protox::compile(
        [
            "hodei/v1/scheduler.proto",
            "hodei/v1/jobs.proto",
            "hodei/v1/tenants.proto",
            "hodei/v1/credentials.proto",
        ]
        .map(|file| root.join(file)),
        [root],
    )
    .expect("schema compiles")
}

fn describe_message(prefix: &str, message: &DescriptorProto, lines: &mut BTreeSet<String>) {
    let name = format!("{prefix}.{}", message.name());
    for field in &message.field {
        let kind = match field.r#type() {
            Type::Message | Type::Enum => field.type_name().to_owned(),
            scalar => format!("{scalar:?}").to_lowercase(),
        };
        let label = if field.label() == Label::Repeated {
            "repeated"
        } else {
            "single"
        };
        let oneof = field
            .oneof_index
            .and_then(|i| message.oneof_decl.get(usize::try_from(i).ok()?))
            .map(|o| format!(" oneof {}", o.name()))
            .unwrap_or_default();
        lines.insert(format!(
            "field {name} {} {} {label} {kind}{oneof}",
            field.number(),
            field.name()
        ));
    }
    for nested in &message.nested_type {
        describe_message(&name, nested, lines);
    }
}

/// One line per field, enum value and method.
fn shape(set: &FileDescriptorSet) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for file in set.file.iter().filter(|f| f.package() == "hodei.v1") {
        let package = format!(".{}", file.package());
        for message in &file.message_type {
            describe_message(&package, message, &mut lines);
        }
        for enumeration in &file.enum_type {
            for value in &enumeration.value {
                lines.insert(format!(
                    "enum {package}.{} {} {}",
                    enumeration.name(),
                    value.number(),
                    value.name()
                ));
            }
        }
        for service in &file.service {
            for method in &service.method {
                lines.insert(format!(
                    "method {package}.{}.{} {}{} -> {}{}",
                    service.name(),
                    method.name(),
                    if method.client_streaming() {
                        "stream "
                    } else {
                        ""
                    },
                    method.input_type(),
                    if method.server_streaming() {
                        "stream "
                    } else {
                        ""
                    },
                    method.output_type(),
                ));
            }
        }
    }
    lines
}

/// Lines of the released shape that the new shape lacks: each is a breaking change.
fn breaking_changes(released: &BTreeSet<String>, current: &BTreeSet<String>) -> Vec<String> {
    released.difference(current).cloned().collect()
}

fn snapshot_path() -> PathBuf {
    proto_root().join("hodei/v1/snapshot.txt")
}

fn read_snapshot() -> BTreeSet<String> {
    std::fs::read_to_string(snapshot_path())
        .expect("snapshot exists")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_schema_keeps_every_released_field() {
    let current = shape(&compile(&proto_root()));
    if std::env::var_os("UPDATE_PROTO_SNAPSHOT").is_some() {
        let mut text = String::from(
            "# Released shape of package hodei.v1; see crates/proto/tests/wire_compat.rs\n",
        );
        for line in &current {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(snapshot_path(), text).unwrap();
    }
    let released = read_snapshot();
    let broken = breaking_changes(&released, &current);
    assert!(
        broken.is_empty(),
        "breaking wire changes (removed, renumbered, renamed or retyped):\n{}",
        broken.join("\n")
    );
    let unrecorded: Vec<_> = current.difference(&released).collect();
    assert!(
        unrecorded.is_empty(),
        "new schema elements not in the snapshot; record them with UPDATE_PROTO_SNAPSHOT=1:\n{unrecorded:?}"
    );
}

/// The check catches each kind of break: it compiles edited copies of the schema.
#[test]
fn the_check_catches_removed_renumbered_and_retyped_fields() {
    let original = std::fs::read_to_string(proto_root().join("hodei/v1/scheduler.proto")).unwrap();
    let released = shape(&compile(&proto_root()));
    let edits = [
        ("uint32 cpu_cores = 1;", "uint64 cpu_cores = 1;"),
        ("uint32 cpu_cores = 1;", "uint32 cpu_cores = 9;"),
        (
            "  string worker_id = 1;\n  // Required: cpu_cores",
            "  // Required: cpu_cores",
        ),
        ("JOB_OUTCOME_TIMED_OUT = 2;", "JOB_OUTCOME_TIMED_OUT = 7;"),
        (
            "rpc GetWorker(GetWorkerRequest) returns (GetWorkerResponse);",
            "",
        ),
    ];
    for (from, to) in edits {
        assert!(original.contains(from), "edit {from:?} applies");
        let dir = tempfile_dir();
        copy_other_files(&dir);
        std::fs::write(
            dir.join("hodei/v1/scheduler.proto"),
            original.replacen(from, to, 1),
        )
        .unwrap();
        let edited = shape(&compile(&dir));
        assert!(
            !breaking_changes(&released, &edited).is_empty(),
            "edit {from:?} -> {to:?} not caught"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Adding a field is compatible.
    let grown = original.replacen(
        "bool docker_enabled = 3;",
        "bool docker_enabled = 3;\n  uint32 gpus = 5;",
        1,
    );
    let dir = tempfile_dir();
    copy_other_files(&dir);
    std::fs::write(dir.join("hodei/v1/scheduler.proto"), grown).unwrap();
    assert!(breaking_changes(&released, &shape(&compile(&dir))).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A copy of the schema's files other than `scheduler.proto`, which each case edits.
fn copy_other_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("hodei/v1")).unwrap();
    for file in [
        "hodei/v1/jobs.proto",
        "hodei/v1/tenants.proto",
        "hodei/v1/credentials.proto",
    ] {
        std::fs::copy(proto_root().join(file), dir.join(file)).unwrap();
    }
}

fn tempfile_dir() -> PathBuf {
    let unique = format!(
        "hodei-proto-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    std::env::temp_dir().join(unique)
}
