//! Building the example hypervisor's image and running it in Bochs and QEMU.

use crate::report::{self, Report};
use crate::util::{self, Failure, Result, fail, note, root, run, step};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Debian packages the emulator runs need: (package, a file it provides).
pub const PACKAGES: &[(&str, &str)] = &[
    ("bochs", "/usr/bin/bochs"),
    ("bochs-term", "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so"),
    ("bochsbios", "/usr/share/bochs/BIOS-bochs-latest"),
    ("vgabios", "/usr/share/vgabios/vgabios.bin"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("grub-pc-bin", "/usr/lib/grub/i386-pc/kernel.img"),
    ("grub-common", "/usr/bin/grub-mkrescue"),
    ("xorriso", "/usr/bin/xorriso"),
    ("mtools", "/usr/bin/mformat"),
];

/// The VMX-capable Bochs 2.7 CPU models the test suite runs on (one CPU each).
pub const TEST_MODELS: &[(&str, u32)] =
    &[("corei7_sandy_bridge_2600k", 1), ("corei7_skylake_x", 2), ("tigerlake", 2)];

/// The Bochs 3.1 runs of the test suite: (CPU model, CPU count).
pub const TEST_MODELS_31: &[(&str, u32)] = &[("wildcat_lake", 2), ("tigerlake", 4)];

/// CPUs QEMU TCG gets in the test suite's no-VMX run.
pub const QEMU_TEST_CPUS: u32 = 2;

/// Exit status the image uses when VMX is unavailable.
pub const STATUS_NO_VMX: u32 = 3;

/// Exit status the image uses on a CPU without long mode (`HVKIT NOLONGMODE`).
pub const STATUS_NO_LONG_MODE: u32 = 5;

fn target_dir() -> PathBuf {
    root().join("target")
}

/// Builds the kernel ELF and the GRUB ISO; returns the ISO path.
pub fn build_image() -> Result<PathBuf> {
    util::ensure_rust_target(None, "x86_64-unknown-none")?;
    let example = root().join("examples/hypervisor");
    let target = target_dir().join("example");
    let mut build = util::cargo();
    build
        .current_dir(&example)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--release", "--target", "x86_64-unknown-none"]);
    run(&mut build)?;
    let elf = target.join("x86_64-unknown-none/release/hvkit-example-hypervisor");
    let tree = target_dir().join("iso");
    let grub = tree.join("boot/grub");
    fs::create_dir_all(&grub).map_err(|e| Failure(format!("creating {}: {e}", grub.display())))?;
    fs::copy(&elf, tree.join("boot/kernel.elf"))
        .map_err(|e| Failure(format!("copying {}: {e}", elf.display())))?;
    fs::write(grub.join("grub.cfg"), "set timeout=0\nset default=0\nmenuentry \"hvkit\" {\n  multiboot2 /boot/kernel.elf\n  boot\n}\n")
        .map_err(|e| Failure(format!("writing grub.cfg: {e}")))?;
    let iso = target_dir().join("hvkit.iso");
    let mut mkrescue = Command::new("grub-mkrescue");
    mkrescue.arg("-o").arg(&iso).arg(&tree).stdout(Stdio::null()).stderr(Stdio::null());
    run(&mut mkrescue)?;
    Ok(iso)
}

/// How an emulator run ended.
pub struct Outcome {
    pub serial: String,
    pub report: Report,
    pub exit_code: Option<i32>,
    /// The emulator's exit status (`None` when it was killed after the timeout).
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub timed_out: bool,
    /// The file that received the emulator's standard error.
    pub stderr: PathBuf,
    /// The emulator's own log (Bochs' `log:` file), as a path on this host.
    pub log: Option<PathBuf>,
}

/// The last `lines` lines of a text file, or why there are none.
fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) if bytes.is_empty() => "      (empty)".to_string(),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].iter().map(|line| format!("      {line}")).collect::<Vec<_>>().join("\n")
        }
        Err(error) => format!("      (cannot read: {error})"),
    }
}

/// What to show when a run failed: the emulator's exit status, the tail of its standard error
/// and of its log, and where the whole log is.
pub fn failure_details(outcome: &Outcome) -> String {
    let status = match (outcome.timed_out, outcome.status) {
        (true, _) => format!("killed after {:.0?} (timeout)", outcome.elapsed),
        (false, Some(status)) => status.to_string(),
        (false, None) => "unknown".to_string(),
    };
    let mut text = format!("    emulator exit status: {status} after {:.1?}\n", outcome.elapsed);
    text.push_str(&format!(
        "    stderr ({}), last lines:\n{}\n",
        outcome.stderr.display(),
        tail(&outcome.stderr, 10)
    ));
    if let Some(log) = &outcome.log {
        text.push_str(&format!("    log {}, last lines:\n{}\n", log.display(), tail(log, 20)));
    }
    let serial: Vec<&str> = outcome.serial.lines().collect();
    let start = serial.len().saturating_sub(5);
    text.push_str("    serial, last lines:\n");
    for line in &serial[start..] {
        text.push_str(&format!("      {}\n", line.trim_end()));
    }
    text
}

/// Runs `command` for at most `timeout`, printing the serial file as it grows when `stream`.
/// The emulator's standard output and error go to `stdout.txt` and `stderr.txt` in `dir`.
fn supervise(
    mut command: Command,
    dir: &Path,
    serial: &Path,
    log: Option<PathBuf>,
    timeout: Duration,
    stream: bool,
) -> Result<Outcome> {
    let _ = fs::remove_file(serial);
    if let Some(log) = &log {
        let _ = fs::remove_file(log);
    }
    let open = |name: &str| {
        let path = dir.join(name);
        fs::File::create(&path)
            .map(|file| (path.clone(), file))
            .map_err(|e| Failure(format!("creating {}: {e}", path.display())))
    };
    let (_, stdout) = open("stdout.txt")?;
    let (stderr_path, stderr) = open("stderr.txt")?;
    let started = Instant::now();
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| Failure(format!("could not start {shown}: {e}")))?;
    let mut printed = 0usize;
    let mut timed_out = false;
    let status = loop {
        if stream {
            printed = print_new(serial, printed);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => return fail(format!("waiting for the emulator: {e}")),
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if stream {
        print_new(serial, printed);
    }
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(serial) {
        let _ = file.read_to_string(&mut text);
    }
    Ok(Outcome {
        report: report::parse(&text),
        serial: text,
        exit_code: status.and_then(|s| s.code()),
        status,
        elapsed: started.elapsed(),
        timed_out,
        stderr: stderr_path,
        log,
    })
}

fn print_new(serial: &Path, printed: usize) -> usize {
    let Ok(bytes) = fs::read(serial) else { return printed };
    if bytes.len() > printed {
        if let Some(new) = bytes.get(printed..) {
            print!("{}", String::from_utf8_lossy(new).replace('\r', ""));
        }
        return bytes.len();
    }
    printed
}

/// A Bochs run's settings.
pub struct BochsRun<'a> {
    pub binary: &'a str,
    pub bios: &'a str,
    pub vga_bios: &'a str,
    pub model: &'a str,
    pub timeout: Duration,
    pub stream: bool,
}

/// Where a Bochs run happens beyond [`BochsRun`]: the CPU count and, for Bochs 3.1, the Debian
/// testing root it runs in (`binary`, `bios` and `vga_bios` are then paths inside that root).
#[derive(Clone, Copy)]
pub struct BochsMachine<'a> {
    pub cpus: u32,
    pub chroot: Option<&'a Path>,
}

/// Boots the ISO in Bochs with one CPU on this host (Debian's 2.7, or `--bochs PATH`).
pub fn run_bochs(iso: &Path, settings: &BochsRun<'_>) -> Result<Outcome> {
    run_bochs_on(iso, settings, BochsMachine { cpus: 1, chroot: None })
}

/// Boots the ISO in Bochs. Debian's Bochs has its debugger built in: the rc file continues and
/// quits when the guest leaves through the iodebug port. With a chroot, the ISO, bochsrc, rc
/// file, serial file and log live inside the root (under /hvkit-run) and Bochs runs through
/// `chroot ROOT BINARY`.
pub fn run_bochs_on(
    iso: &Path,
    settings: &BochsRun<'_>,
    machine: BochsMachine<'_>,
) -> Result<Outcome> {
    let name = if machine.cpus == 1 {
        format!("bochs-{}", settings.model)
    } else {
        format!("bochs-{}-x{}", settings.model, machine.cpus)
    };
    // `inside` is the run directory as Bochs sees it, `dir` the same directory on this host.
    let (dir, inside, iso_inside) = match machine.chroot {
        None => {
            let dir = target_dir().join(&name);
            (dir.clone(), dir, iso.to_path_buf())
        }
        Some(root) => {
            let run = Path::new("/hvkit-run");
            let host_run = root.join("hvkit-run");
            fs::create_dir_all(&host_run)
                .map_err(|e| Failure(format!("creating {}: {e}", host_run.display())))?;
            fs::copy(iso, host_run.join("hvkit.iso"))
                .map_err(|e| Failure(format!("copying the ISO into {}: {e}", root.display())))?;
            (host_run.join(&name), run.join(&name), run.join("hvkit.iso"))
        }
    };
    fs::create_dir_all(&dir).map_err(|e| Failure(format!("creating {}: {e}", dir.display())))?;
    let config = format!(
        "megs: 128\nromimage: file={bios}\nvgaromimage: file={vga}\n\
         cpu: model={model}, count={cpus}, ips=50000000, reset_on_triple_fault=0\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\nboot: cdrom\ncom1: enabled=1, mode=file, dev={serial}\n\
         clock: sync=none, time0=local\nmouse: enabled=0\nspeaker: enabled=0\nlog: {log}\npanic: action=fatal\n\
         display_library: term\n",
        bios = settings.bios,
        vga = settings.vga_bios,
        model = settings.model,
        cpus = machine.cpus,
        iso = iso_inside.display(),
        serial = inside.join("serial.txt").display(),
        log = inside.join("bochs.log").display(),
    );
    fs::write(dir.join("bochsrc"), config).map_err(|e| Failure(format!("writing bochsrc: {e}")))?;
    fs::write(dir.join("debugger.rc"), "c\nquit\n")
        .map_err(|e| Failure(format!("writing the rc file: {e}")))?;
    let mut command = match machine.chroot {
        None => Command::new(settings.binary),
        Some(root) => {
            let mut chroot = Command::new("chroot");
            chroot.arg(root).arg(settings.binary);
            chroot
        }
    };
    command
        .env("TERM", "dumb")
        .current_dir(&dir)
        .arg("-q")
        .arg("-f")
        .arg(inside.join("bochsrc"))
        .arg("-rc")
        .arg(inside.join("debugger.rc"));
    supervise(
        command,
        &dir,
        &dir.join("serial.txt"),
        Some(dir.join("bochs.log")),
        settings.timeout,
        settings.stream,
    )
}

/// Boots the ISO in QEMU (TCG, or KVM with `kvm`) with `cpus` CPUs.
pub fn run_qemu_smp(
    iso: &Path,
    kvm: bool,
    cpus: u32,
    timeout: Duration,
    stream: bool,
) -> Result<Outcome> {
    let dir = target_dir().join(if kvm { "qemu-kvm" } else { "qemu-tcg" });
    fs::create_dir_all(&dir).map_err(|e| Failure(format!("creating {}: {e}", dir.display())))?;
    let serial = dir.join("serial.txt");
    let mut command = Command::new("qemu-system-x86_64");
    command.args([
        "-M",
        "pc",
        "-m",
        "128M",
        "-display",
        "none",
        "-nic",
        "none",
        "-boot",
        "d",
        "-no-reboot",
    ]);
    command.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    command.arg("-serial").arg(format!("file:{}", serial.display()));
    command.arg("-cdrom").arg(iso);
    command.arg("-smp").arg(cpus.to_string());
    if kvm {
        command.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        command.args(["-cpu", "max"]);
    }
    supervise(command, &dir, &serial, None, timeout, stream)
}

/// `true` when this host can give a QEMU guest VMX (KVM with nested VMX on an Intel CPU).
pub fn kvm_nested_available() -> bool {
    let nested = fs::read_to_string("/sys/module/kvm_intel/parameters/nested")
        .is_ok_and(|value| matches!(value.trim(), "Y" | "y" | "1"));
    let vmx = fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "vmx"));
    Path::new("/dev/kvm").exists() && nested && vmx
}

/// Bochs 3.1 comes from Debian testing: these packages go into the root.
const BOCHS31_PACKAGES: &[&str] = &["bochs", "bochsbios", "bochs-term", "vgabios"];
/// The Bochs binary inside the root (Debian's `bochs` is a wrapper script around it).
pub const BOCHS31_BINARY: &str = "/usr/bin/bochs-bin";
/// The BIOS images inside the root.
pub const BOCHS31_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
pub const BOCHS31_VGA_BIOS: &str = "/usr/share/bochs/VGABIOS-lgpl-latest";
/// The `display_library: term` plugin inside the root (package bochs-term).
const BOCHS31_TERM_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so";
/// The default CPU model for `cargo xtask run --emulator bochs31`.
pub const BOCHS31_DEFAULT_MODEL: &str = "wildcat_lake";
/// Written last when the root is complete; its first line says what was built.
const BOCHS31_MARKER: &str = ".hvkit-root-complete";
const BOCHS31_MARKER_LINE: &str =
    "hvkit bochs root v1: debian testing, bochs bochsbios bochs-term vgabios";

/// Where the Bochs 3.1 root lives: `<cache dir>/hvkit/bochs-3.1-root`.
pub fn bochs31_root() -> Result<PathBuf> {
    match util::cache_dir() {
        Some(cache) => Ok(cache.join("hvkit").join("bochs-3.1-root")),
        None => fail(
            "neither XDG_CACHE_HOME nor HOME is set: no cache directory for the Bochs 3.1 root",
        ),
    }
}

/// `true` when the root was completed (marker written last) and still has Bochs and its BIOSes.
fn bochs31_complete(root: &Path) -> bool {
    let marker = fs::read_to_string(root.join(BOCHS31_MARKER)).unwrap_or_default();
    marker.lines().next() == Some(BOCHS31_MARKER_LINE)
        && [BOCHS31_BINARY, BOCHS31_BIOS, BOCHS31_VGA_BIOS, BOCHS31_TERM_PLUGIN]
            .iter()
            .all(|file| root.join(file.trim_start_matches('/')).is_file())
}

/// The Debian mirror for debootstrap: `HVKIT_DEBIAN_MIRROR`, else the host's own apt sources.
fn debian_mirror() -> Result<String> {
    if let Some(mirror) = std::env::var_os("HVKIT_DEBIAN_MIRROR") {
        return Ok(mirror.to_string_lossy().into_owned());
    }
    util::debian_mirror(&util::host_apt_sources()).ok_or_else(|| {
        Failure(
            "no Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d/*.{list,sources} \
             (a `main` source whose URI ends in /debian); set HVKIT_DEBIAN_MIRROR to a Debian mirror"
                .to_string(),
        )
    })
}

/// Unmounts whatever an interrupted build left mounted below `root` (debootstrap mounts /proc
/// and /sys inside the target), deepest first, so that removing the root stays inside it.
fn unmount_below(root: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else { return };
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|point| Path::new(point).starts_with(root))
        .collect();
    below.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in below {
        let _ = util::run(Command::new("umount").arg("-l").arg(point));
    }
}

/// The commands that build the root, for a user without root privileges to run.
fn bochs31_commands(root: &Path, mirror: &str) -> String {
    let root = root.display();
    format!(
        "apt-get install -y debootstrap\n  \
         rm -rf --one-file-system {root}\n  \
         debootstrap --variant=minbase testing {root} {mirror}\n  \
         chroot {root} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages}\n  \
         chroot {root} apt-get clean\n  \
         echo '{BOCHS31_MARKER_LINE}' > {root}/{BOCHS31_MARKER}",
        packages = BOCHS31_PACKAGES.join(" "),
    )
}

/// Makes sure the Bochs 3.1 root exists: a minimal Debian testing root (debootstrap) with
/// Debian's bochs, bochsbios, bochs-term and vgabios inside, under the user's cache directory.
/// Nothing on the host changes except installing debootstrap when it is missing. A root
/// without the marker (an interrupted build) is removed and built again. Returns its path.
pub fn ensure_bochs31() -> Result<PathBuf> {
    let root = bochs31_root()?;
    if bochs31_complete(&root) {
        if !util::is_root() {
            return fail(format!(
                "Bochs 3.1 runs in {} through chroot, which needs root: run this command as root \
                 (e.g. `sudo -E env PATH=$PATH cargo xtask ...`)",
                root.display()
            ));
        }
        return Ok(root);
    }
    let mirror = debian_mirror()?;
    if !util::is_root() {
        return fail(format!(
            "Bochs 3.1 needs a Debian testing root at {} (missing or incomplete); building and \
             entering it needs root. Run this command as root (e.g. `sudo -E env PATH=$PATH cargo \
             xtask ...`), or build the root as root with:\n  {}",
            root.display(),
            bochs31_commands(&root, &mirror)
        ));
    }
    step(&format!(
        "Bochs 3.1: building a Debian testing root in {} (mirror {mirror})",
        root.display()
    ));
    let started = Instant::now();
    util::ensure_apt(&[("debootstrap", "/usr/sbin/debootstrap")])?;
    if root.exists() {
        note("removing the incomplete root left by an earlier build");
        unmount_below(&root);
        util::run(Command::new("rm").arg("-rf").arg("--one-file-system").arg(&root))?;
    }
    if let Some(parent) = root.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Failure(format!("creating {}: {e}", parent.display())))?;
    }
    // The build's own output goes to a log beside the root; its tail is shown on failure.
    let mut log_name = root.file_name().unwrap_or_default().to_os_string();
    log_name.push(".build.log");
    let log = root.with_file_name(log_name);
    let logged = |command: &mut Command| -> Result {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Failure(format!("opening {}: {e}", log.display())))?;
        let copy = file.try_clone().map_err(|e| Failure(format!("{}: {e}", log.display())))?;
        util::run(command.stdout(copy).stderr(file)).map_err(|Failure(message)| {
            Failure(format!("{message}\n    {}, last lines:\n{}", log.display(), tail(&log, 15)))
        })
    };
    let _ = fs::remove_file(&log);
    note(&format!("build output goes to {}", log.display()));
    let built = (|| {
        logged(
            Command::new("debootstrap")
                .args(["--variant=minbase", "testing"])
                .arg(&root)
                .arg(&mirror),
        )?;
        // No service may start inside the root while packages are configured.
        let policy = root.join("usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n")
            .map_err(|e| Failure(format!("writing {}: {e}", policy.display())))?;
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755))
            .map_err(|e| Failure(format!("{}: {e}", policy.display())))?;
        logged(
            Command::new("chroot")
                .arg(&root)
                .args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q"])
                .arg("--no-install-recommends")
                .args(BOCHS31_PACKAGES),
        )?;
        logged(Command::new("chroot").arg(&root).args(["apt-get", "clean"]))
    })();
    unmount_below(&root);
    built.map_err(|Failure(message)| {
        Failure(format!(
            "{message}\nbuilding the Bochs 3.1 root failed; to do it by hand, as root:\n  {}",
            bochs31_commands(&root, &mirror)
        ))
    })?;
    let version = util::output_of(Command::new("chroot").arg(&root).args([
        "dpkg-query",
        "-W",
        "-f",
        "${Version}",
        "bochs",
    ]))
    .unwrap_or_default();
    fs::write(root.join(BOCHS31_MARKER), format!("{BOCHS31_MARKER_LINE}\nbochs {version}\n"))
        .map_err(|e| Failure(format!("writing the marker: {e}")))?;
    if !bochs31_complete(&root) {
        return fail(format!(
            "the Bochs 3.1 root in {} lacks {BOCHS31_BINARY}, the BIOS images or the term plugin after installing",
            root.display()
        ));
    }
    note(&format!("Bochs {version} root ready in {:.0?}", started.elapsed()));
    Ok(root)
}

/// The Debian version of the Bochs inside the root, as recorded in its marker.
pub fn bochs31_version(root: &Path) -> String {
    fs::read_to_string(root.join(BOCHS31_MARKER))
        .ok()
        .and_then(|marker| marker.lines().nth(1).map(str::to_string))
        .unwrap_or_else(|| "bochs (version unknown)".to_string())
}

fn table(model: &str, outcome: &Outcome) {
    println!("    {model}: {:.1?}", outcome.elapsed);
    for scenario in &outcome.report.scenarios {
        let name = match (scenario.get("apic"), scenario.get("target")) {
            ("", _) => scenario.get("name").to_string(),
            (apic, "0" | "") => format!("{} {apic}", scenario.get("name")),
            (apic, target) => format!("{} {apic} ->{target}", scenario.get("name")),
        };
        println!(
            "      {:<22} {:<12} sent={:<6} exits={:<6} handled={:<6} eois={:<5} lost={} dup={} {}",
            name,
            scenario.get("strategy"),
            scenario.get("sent"),
            scenario.get("exits"),
            scenario.get("handled"),
            scenario.get("eois"),
            scenario.get("lost"),
            scenario.get("duplicated"),
            scenario.get("result"),
        );
    }
}

/// The wall-clock time of each emulator phase of the last [`test_suite`] run, in order.
#[derive(Debug, Default, Clone)]
pub struct PhaseTimes(pub Vec<(String, Duration)>);

impl PhaseTimes {
    fn record(&mut self, phase: &str, started: Instant) {
        let elapsed = started.elapsed();
        note(&format!("({phase}: {elapsed:.1?})"));
        self.0.push((phase.to_string(), elapsed));
    }

    /// The sum of all phases.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, time)| *time).sum()
    }
}

/// Checks one scenario-suite run; problems (with the run's details) go to `failures`.
fn check_suite_run(label: &str, outcome: &Outcome, cpus: u32, failures: &mut Vec<String>) {
    table(label, outcome);
    let mut problems = report::problems(&outcome.report);
    problems.extend(report::smp_problems(&outcome.report, cpus));
    problems.extend(report::smp_vmx_problems(&outcome.report, cpus));
    if outcome.timed_out {
        problems.push("timed out".to_string());
    }
    if !problems.is_empty() {
        print!("{}", failure_details(outcome));
    }
    for problem in problems {
        failures.push(format!("{label}: {problem}"));
    }
}

/// The emulator part of `cargo xtask test`: the scenario suite on Bochs 2.7 (one CPU, three
/// models) and on Bochs 3.1 (SMP), and the no-VMX report on QEMU TCG with two CPUs. Prints
/// each phase's time; returns them.
pub fn test_suite() -> Result<PhaseTimes> {
    let mut times = PhaseTimes::default();
    step("emulator prerequisites (Debian packages)");
    let started = Instant::now();
    util::ensure_apt(PACKAGES)?;
    times.record("prerequisites", started);
    step("example hypervisor image (ELF + GRUB ISO)");
    let started = Instant::now();
    let iso = build_image()?;
    times.record("image", started);
    let mut failures = Vec::new();
    for (model, cpus) in TEST_MODELS {
        step(&format!("scenario suite in Bochs 2.7, cpu model {model}, {cpus} CPUs"));
        let started = Instant::now();
        let settings = BochsRun {
            binary: "bochs",
            bios: "/usr/share/bochs/BIOS-bochs-latest",
            vga_bios: "/usr/share/vgabios/vgabios.bin",
            model,
            timeout: Duration::from_secs(180),
            stream: false,
        };
        let outcome = run_bochs_on(&iso, &settings, BochsMachine { cpus: *cpus, chroot: None })?;
        check_suite_run(&format!("bochs-2.7 {model} x{cpus}"), &outcome, *cpus, &mut failures);
        times.record(&format!("bochs 2.7 {model} x{cpus}"), started);
    }
    step("Bochs 3.1 (Debian testing root)");
    let started = Instant::now();
    let root = ensure_bochs31()?;
    note(&format!("{} in {}", bochs31_version(&root), root.display()));
    times.record("bochs 3.1 root", started);
    for (model, cpus) in TEST_MODELS_31 {
        step(&format!("scenario suite in Bochs 3.1, cpu model {model}, {cpus} CPUs"));
        let started = Instant::now();
        let settings = BochsRun {
            binary: BOCHS31_BINARY,
            bios: BOCHS31_BIOS,
            vga_bios: BOCHS31_VGA_BIOS,
            model,
            timeout: Duration::from_secs(240),
            stream: false,
        };
        let machine = BochsMachine { cpus: *cpus, chroot: Some(&root) };
        let outcome = run_bochs_on(&iso, &settings, machine)?;
        check_suite_run(&format!("bochs-3.1 {model} x{cpus}"), &outcome, *cpus, &mut failures);
        times.record(&format!("bochs 3.1 {model} x{cpus}"), started);
    }
    step(&format!(
        "QEMU TCG, {QEMU_TEST_CPUS} CPUs: the host-side scenarios pass and the report says which VMX scenarios could not run"
    ));
    let started = Instant::now();
    let outcome = run_qemu_smp(&iso, false, QEMU_TEST_CPUS, Duration::from_secs(60), false)?;
    println!("    qemu-tcg: {:.1?}, exit code {:?}", outcome.elapsed, outcome.exit_code);
    for line in outcome.serial.lines().filter(|line| line.starts_with("HVKIT")) {
        println!("      {}", line.trim_end());
    }
    let expected_code = Some(((STATUS_NO_VMX << 1) | 1) as i32);
    let mut problems = report::problems_with_status(&outcome.report, STATUS_NO_VMX);
    problems.extend(report::smp_problems(&outcome.report, QEMU_TEST_CPUS));
    if outcome.report.no_vmx.is_none() {
        problems.push("no HVKIT NOVMX line".to_string());
    }
    if outcome.report.vmx_not_run.is_none() {
        problems.push("no HVKIT VMX-NOT-RUN line".to_string());
    }
    if outcome.report.exit_status != Some(STATUS_NO_VMX) || outcome.exit_code != expected_code {
        problems.push(format!(
            "expected status {STATUS_NO_VMX} (QEMU exit code {expected_code:?}), got {:?} / {:?}",
            outcome.report.exit_status, outcome.exit_code
        ));
    }
    if outcome.timed_out {
        problems.push("timed out".to_string());
    }
    if !problems.is_empty() {
        print!("{}", failure_details(&outcome));
    }
    failures.extend(problems.into_iter().map(|problem| format!("qemu-tcg: {problem}")));
    times.record(&format!("qemu tcg x{QEMU_TEST_CPUS}"), started);
    step("emulator phase times");
    for (phase, time) in &times.0 {
        note(&format!("{phase:<40} {time:>8.1?}"));
    }
    note(&format!("{:<40} {:>8.1?}", "total", times.total()));
    if failures.is_empty() {
        note("all emulator runs passed");
        Ok(times)
    } else {
        fail(format!("emulator suite failed:\n  {}", failures.join("\n  ")))
    }
}

const RUN_HELP: &str = "\
cargo xtask run [options]
  --emulator qemu|qemu-kvm|bochs|bochs31
                                   default: qemu-kvm when KVM offers nested VMX, else bochs.
                                   bochs31: Debian testing's Bochs 3.1 in a root under the cache
                                   directory (built on first use; needs root)
  --bochs PATH                     Bochs binary (default: bochs), e.g. an upstream build with FRED
  --bochs-bios PATH                BIOS image (default: /usr/share/bochs/BIOS-bochs-latest)
  --vga-bios PATH                  VGA BIOS (default: /usr/share/vgabios/vgabios.bin; bochs31:
                                   /usr/share/bochs/VGABIOS-lgpl-latest inside the root)
  --cpu MODEL                      Bochs cpu model (default: corei7_skylake_x; bochs31: wildcat_lake)
  --cpus N                         CPUs (Bochs `cpu: count=N`, QEMU `-smp N`; default 1)
  --timeout SECS                   kill the emulator after SECS (default: 300)
";

/// `cargo xtask run`.
pub fn run_command(args: &[String]) -> Result {
    let mut emulator: Option<String> = None;
    let mut bochs = "bochs".to_string();
    let mut bios: Option<String> = None;
    let mut vga: Option<String> = None;
    let mut model: Option<String> = None;
    let mut cpus = 1u32;
    let mut timeout = 300u64;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .ok_or_else(|| Failure(format!("{name} needs a value\n\n{RUN_HELP}")))
        };
        match arg.as_str() {
            "--emulator" => emulator = Some(value("--emulator")?),
            "--bochs" => bochs = value("--bochs")?,
            "--bochs-bios" => bios = Some(value("--bochs-bios")?),
            "--vga-bios" => vga = Some(value("--vga-bios")?),
            "--cpu" => model = Some(value("--cpu")?),
            "--cpus" => {
                cpus = value("--cpus")?
                    .parse()
                    .ok()
                    .filter(|count| (1..=16).contains(count))
                    .ok_or_else(|| Failure("--cpus takes a count from 1 to 16".into()))?
            }
            "--timeout" => {
                timeout = value("--timeout")?
                    .parse()
                    .map_err(|_| Failure("--timeout takes seconds".into()))?
            }
            "--help" | "-h" => {
                print!("{RUN_HELP}");
                return Ok(());
            }
            other => return fail(format!("unknown option {other}\n\n{RUN_HELP}")),
        }
    }
    let emulator = emulator.unwrap_or_else(|| {
        if kvm_nested_available() { "qemu-kvm".to_string() } else { "bochs".to_string() }
    });
    let bochs31 = if emulator == "bochs31" { Some(ensure_bochs31()?) } else { None };
    util::ensure_apt(PACKAGES)?;
    let iso = build_image()?;
    let timeout = Duration::from_secs(timeout);
    let outcome = match emulator.as_str() {
        "bochs" => {
            step(&format!("booting in {emulator} ({bochs})"));
            let settings = BochsRun {
                binary: &bochs,
                bios: bios.as_deref().unwrap_or("/usr/share/bochs/BIOS-bochs-latest"),
                vga_bios: vga.as_deref().unwrap_or("/usr/share/vgabios/vgabios.bin"),
                model: model.as_deref().unwrap_or("corei7_skylake_x"),
                timeout,
                stream: true,
            };
            run_bochs_on(&iso, &settings, BochsMachine { cpus, chroot: None })?
        }
        "bochs31" => {
            let Some(root) = bochs31 else { return fail("no Bochs 3.1 root") };
            step(&format!("booting in {} ({})", bochs31_version(&root), root.display()));
            let settings = BochsRun {
                binary: BOCHS31_BINARY,
                bios: bios.as_deref().unwrap_or(BOCHS31_BIOS),
                vga_bios: vga.as_deref().unwrap_or(BOCHS31_VGA_BIOS),
                model: model.as_deref().unwrap_or(BOCHS31_DEFAULT_MODEL),
                timeout,
                stream: true,
            };
            run_bochs_on(&iso, &settings, BochsMachine { cpus, chroot: Some(&root) })?
        }
        "qemu" | "qemu-kvm" => {
            step(&format!("booting in {emulator}"));
            run_qemu_smp(&iso, emulator == "qemu-kvm", cpus, timeout, true)?
        }
        other => return fail(format!("unknown emulator {other}\n\n{RUN_HELP}")),
    };
    println!();
    if outcome.timed_out {
        return fail(format!(
            "the emulator did not finish within {timeout:?}\n{}",
            failure_details(&outcome)
        ));
    }
    match outcome.report.exit_status {
        Some(0) => Ok(()),
        Some(STATUS_NO_VMX) => {
            let host_side = outcome
                .report
                .summary
                .as_ref()
                .and_then(|summary| summary.get("result").cloned())
                .unwrap_or_else(|| "missing".to_string());
            fail(format!(
                "no VMX in this emulator (host-side scenarios: {host_side}; VMX scenarios not run): {}",
                outcome.report.no_vmx.unwrap_or_default()
            ))
        }
        Some(STATUS_NO_LONG_MODE) => fail(format!(
            "this CPU has no long mode: {}",
            outcome.report.no_long_mode.unwrap_or_default()
        )),
        Some(status) => {
            fail(format!("the hypervisor reported status {status}\n{}", failure_details(&outcome)))
        }
        None => fail(format!("the report has no HVKIT EXIT line\n{}", failure_details(&outcome))),
    }
}
