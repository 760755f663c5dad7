//! For tests on the real container runtime: whether this machine can run
//! it, a busybox image made locally from busybox-static, and the cleanup
//! of everything containerd, runc and CNI leave on the host (processes,
//! mounts, cgroups, the bridge), run even when a test fails.

use std::path::{Path, PathBuf};

use agent::cri::images::{Entry, Image};

/// Why this machine cannot run the container tests, if it cannot.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("they need root".into());
    }
    for program in ["containerd", "runc", "ctr", "busybox"] {
        if !agent::cri::containerd::on_path(program) {
            return Some(format!("{program} is not installed"));
        }
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        return Some("containernetworking-plugins is not installed".into());
    }
    None
}

fn busybox_path() -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .expect("busybox on PATH")
}

/// busybox-static as an image: `/bin/busybox`, a link per applet, a root
/// user, and `cmd` as its default command.
pub fn busybox_image(cmd: &[&str]) -> Image {
    let busybox = busybox_path();
    let list = std::process::Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut entries = vec![
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "etc".into(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
        Entry::Dir {
            path: "root".into(),
            mode: 0o700,
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: std::fs::read(&busybox).unwrap(),
        },
        Entry::File {
            path: "etc/passwd".into(),
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                .to_vec(),
        },
        Entry::File {
            path: "etc/group".into(),
            mode: 0o644,
            data: b"root:x:0:\nnobody:x:65534:\n".to_vec(),
        },
    ];
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            entries.push(Entry::Symlink {
                path: format!("bin/{applet}"),
                target: "busybox".into(),
            });
        }
    }
    Image {
        entries,
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..Image::default()
    }
}

/// An agent's airgap directory below `agent_dir` holding busybox as
/// `image`, whose command the pods set.
pub fn airgap_busybox(agent_dir: &Path, image: &str) {
    let images = agent_dir.join("agent/images");
    std::fs::create_dir_all(&images).unwrap();
    busybox_image(&["sleep", "3600"])
        .write_docker_archive(image, &images.join("busybox.tar"))
        .unwrap();
}

/// Removes what a containerd agent living in `data_dir` left: its
/// containers' processes, its daemons, the mounts below the directory,
/// the pods' cgroups, the CNI bridge and the pod network's NAT table,
/// and puts back the forwarding sysctls the agent turned on.
pub struct Cleanup {
    pub data_dir: PathBuf,
    /// The sysctls' values before the test.
    sysctls: Vec<(&'static str, String)>,
}

/// What an agent in this network namespace turns on for its pods.
const SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
];

impl Cleanup {
    pub fn new(data_dir: &Path) -> Cleanup {
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|p| Some((*p, std::fs::read_to_string(p).ok()?)))
            .collect();
        Cleanup {
            data_dir: data_dir.to_path_buf(),
            sysctls,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_pod_cgroups();
        kill_processes_naming(&self.data_dir);
        unmount_below(&self.data_dir);
        remove_pod_cgroups();
        let quiet = |program: &str, args: &[&str]| {
            let _ = std::process::Command::new(program)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("ip", &["link", "delete", "cni0"]);
        // The node's network pieces the agent makes in the host's namespace.
        quiet("ip", &["link", "delete", "k3rs-dns"]);
        quiet("ip", &["addr", "delete", "10.43.0.10/32", "dev", "lo"]);
        quiet("nft", &["delete", "table", "ip", "k3rs-proxy"]);
        quiet("nft", &["delete", "table", "ip", "k3rs-nat"]);
        for (path, value) in &self.sysctls {
            let _ = std::fs::write(path, value);
        }
    }
}

/// The k3rs pod cgroups of every hierarchy, deepest first.
fn pod_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten();
    for h in hierarchies {
        let root = h.path().join("k3rs");
        if !root.is_dir() {
            continue;
        }
        let pods = std::fs::read_dir(&root).into_iter().flatten().flatten();
        for pod in pods.filter(|p| p.path().is_dir()) {
            let containers = std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten();
            found.extend(containers.filter(|c| c.path().is_dir()).map(|c| c.path()));
            found.push(pod.path());
        }
        found.push(root);
    }
    found
}

fn kill_pod_cgroups() {
    for cgroup in pod_cgroups() {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn remove_pod_cgroups() {
    for _ in 0..20 {
        let left: Vec<PathBuf> = pod_cgroups()
            .into_iter()
            .filter(|c| std::fs::remove_dir(c).is_err())
            .collect();
        if left.is_empty() {
            return;
        }
        kill_pod_cgroups();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// containerd and its shims name the data directory in their arguments.
fn kill_processes_naming(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for p in procs {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
}

fn unmount_below(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let Ok(c) = std::ffi::CString::new(point) else {
            continue;
        };
        // SAFETY: a valid C string; MNT_DETACH never blocks.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
