//! Images without a registry: a docker-archive writer (the format `docker
//! save` writes and `ctr images import` reads), the sandbox ("pause")
//! image made here from a few bytes of machine code, and the import of
//! the airgap tarballs K3s users drop in `agent/images/`.
//!
//! Importing goes through containerd's own `ctr`, which ships with it:
//! containerd's import (content store, image record, unpack into the
//! snapshotter) has no CRI call, and `ctr` is its reference client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

/// The sandbox image every pod's sandbox runs.
pub const PAUSE_IMAGE: &str = "k3rs.local/pause:1";

/// The containerd namespace the CRI plugin keeps its images in.
const CRI_NAMESPACE: &str = "k8s.io";
/// An import of a large tarball can take a while on a slow disk.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// One file of an image layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// A single-layer image: its files and its config.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub entries: Vec<Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The GOARCH name of this machine, which image configs carry.
pub fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Image {
    /// The layer as an uncompressed tar.
    fn layer(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir { path, mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_data(&mut header, path, std::io::empty())?;
                }
                Entry::File { path, mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Symlink { path, target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }

    /// Writes the image as a docker-archive tarball tagged `tag`.
    pub fn write_docker_archive(&self, tag: &str, out: &Path) -> Result<()> {
        let layer = self.layer()?;
        let layer_id = sha256_hex(&layer);
        let mut config = json!({
            "architecture": goarch(),
            "os": "linux",
            "config": {"Env": self.env},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_id}")]},
        });
        if !self.entrypoint.is_empty() {
            config["config"]["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["config"]["Cmd"] = json!(self.cmd);
        }
        if !self.working_dir.is_empty() {
            config["config"]["WorkingDir"] = json!(self.working_dir);
        }
        let config = serde_json::to_vec(&config)?;
        let config_name = format!("{}.json", sha256_hex(&config));
        let layer_name = format!("{layer_id}/layer.tar");
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": [tag],
            "Layers": [layer_name],
        }]))?;
        let file = std::fs::File::create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        for (name, data) in [
            (layer_name.as_str(), layer.as_slice()),
            (config_name.as_str(), config.as_slice()),
            ("manifest.json", manifest.as_slice()),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, name, data)?;
        }
        tar.into_inner()?;
        Ok(())
    }
}

/// The sandbox image: one static program that blocks forever, which is
/// all a sandbox's process has to do (it holds the pod's namespaces; the
/// runtime kills it with SIGKILL on stop).
pub fn pause_image() -> Result<Image> {
    Ok(Image {
        entries: vec![Entry::File {
            path: "pause".into(),
            mode: 0o755,
            data: pause_program()?,
        }],
        entrypoint: vec!["/pause".into()],
        ..Image::default()
    })
}

/// A minimal static ELF executable for this machine: a loop around a
/// blocking system call (pause(2) on x86-64, ppoll(2) with no fds on
/// arm64, which has no pause). No libc, no loader, a few hundred bytes.
fn pause_program() -> Result<Vec<u8>> {
    let (machine, code): (u16, Vec<u8>) = match std::env::consts::ARCH {
        // loop: mov eax, 34 (pause); syscall; jmp loop
        "x86_64" => (62, vec![0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7]),
        // loop: mov x0..x3, #0; mov x8, #73 (ppoll); svc #0; b loop
        "aarch64" => (
            183,
            [
                0xd280_0000u32,
                0xd280_0001,
                0xd280_0002,
                0xd280_0003,
                0xd280_0928,
                0xd400_0001,
                0x17ff_fffa,
            ]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect(),
        ),
        other => bail!("no sandbox program for the {other} architecture yet"),
    };
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little-endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers offset
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // header size, phdr size, phdr count, shdr size, count, names index
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // One PT_LOAD segment, read + execute, mapping the whole file.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    Ok(elf)
}

/// Makes the sandbox image in `dir` and imports it.
pub async fn import_pause_image(socket: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tarball = dir.join("k3rs-pause.tar");
    pause_image()?.write_docker_archive(PAUSE_IMAGE, &tarball)?;
    import(socket, &tarball).await
}

/// The airgap tarballs in `dir`: docker-archive or OCI layout, plain,
/// gzip or zstd compressed (ctr detects which).
pub fn airgap_tarballs(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            p.is_file()
                && [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
        })
        .collect();
    found.sort();
    found
}

/// Imports every airgap tarball in `dir`; one that fails is logged and
/// skipped, so a corrupt file does not keep the node from running pods.
/// Returns how many were imported.
pub async fn import_airgap_images(socket: &Path, dir: &Path) -> usize {
    let mut imported = 0;
    for tarball in airgap_tarballs(dir) {
        let started = std::time::Instant::now();
        match import(socket, &tarball).await {
            Ok(()) => {
                imported += 1;
                tracing::info!(file = %tarball.display(), seconds = started.elapsed().as_secs_f32(), "imported images");
            }
            Err(e) => {
                tracing::error!(file = %tarball.display(), error = %format!("{e:#}"), "importing images failed; skipping the file")
            }
        }
    }
    imported
}

/// `ctr images import` of one tarball into the CRI's namespace, unpacked
/// for the overlayfs snapshotter.
pub async fn import(socket: &Path, tarball: &Path) -> Result<()> {
    let mut cmd = tokio::process::Command::new("ctr");
    cmd.arg("--address")
        .arg(socket)
        .args([
            "--namespace",
            CRI_NAMESPACE,
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
        ])
        .arg(tarball)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(IMPORT_TIMEOUT, cmd.output())
        .await
        .with_context(|| {
            format!(
                "importing {} took over {}s",
                tarball.display(),
                IMPORT_TIMEOUT.as_secs()
            )
        })?
        .context("cannot run ctr (it ships with containerd)")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("ctr images import {}: {}", tarball.display(), stderr.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_program_is_an_elf_for_this_machine() {
        let elf = pause_program().unwrap();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert!(elf.len() < 256);
    }

    #[test]
    fn pause_program_runs_until_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        std::fs::write(&path, pause_program().unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "it must block");
        child.kill().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn docker_archive_has_manifest_config_and_layer() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        let image = Image {
            entries: vec![
                Entry::Dir {
                    path: "bin".into(),
                    mode: 0o755,
                },
                Entry::File {
                    path: "bin/x".into(),
                    mode: 0o755,
                    data: b"x".to_vec(),
                },
                Entry::Symlink {
                    path: "bin/y".into(),
                    target: "x".into(),
                },
            ],
            cmd: vec!["/bin/x".into()],
            ..Image::default()
        };
        image.write_docker_archive("k3rs.local/t:1", &out).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3);
        assert!(names[0].ends_with("/layer.tar"));
        assert_eq!(names[2], "manifest.json");
        assert_eq!(airgap_tarballs(dir.path()), vec![out]);
    }
}
