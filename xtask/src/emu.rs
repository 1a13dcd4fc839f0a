//! Building the example hypervisor's image and running it in Bochs and QEMU.

use crate::report::{self, Report};
use crate::util::{self, Failure, Result, fail, note, root, run, step};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// The VMX-capable Bochs 2.7 CPU models the test suite runs on.
pub const TEST_MODELS: &[&str] = &["corei7_sandy_bridge_2600k", "corei7_skylake_x", "tigerlake"];

/// Exit status the image uses when VMX is unavailable.
pub const STATUS_NO_VMX: u32 = 3;

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
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Runs `command` for at most `timeout`, printing the serial file as it grows when `stream`.
fn supervise(
    mut command: Command,
    serial: &Path,
    timeout: Duration,
    stream: bool,
) -> Result<Outcome> {
    let _ = fs::remove_file(serial);
    let started = Instant::now();
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
        elapsed: started.elapsed(),
        timed_out,
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

/// Boots the ISO in Bochs. Debian's Bochs has its debugger built in: the rc file continues and
/// quits when the guest leaves through the iodebug port.
pub fn run_bochs(iso: &Path, settings: &BochsRun<'_>) -> Result<Outcome> {
    let dir = target_dir().join(format!("bochs-{}", settings.model));
    fs::create_dir_all(&dir).map_err(|e| Failure(format!("creating {}: {e}", dir.display())))?;
    let serial = dir.join("serial.txt");
    let config = format!(
        "megs: 128\nromimage: file={bios}\nvgaromimage: file={vga}\ncpu: model={model}, count=1, ips=50000000, reset_on_triple_fault=0\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\nboot: cdrom\ncom1: enabled=1, mode=file, dev={serial}\n\
         clock: sync=none, time0=local\nmouse: enabled=0\nspeaker: enabled=0\nlog: {log}\npanic: action=fatal\n\
         display_library: term\n",
        bios = settings.bios,
        vga = settings.vga_bios,
        model = settings.model,
        iso = iso.display(),
        serial = serial.display(),
        log = dir.join("bochs.log").display(),
    );
    let bochsrc = dir.join("bochsrc");
    fs::write(&bochsrc, config).map_err(|e| Failure(format!("writing bochsrc: {e}")))?;
    let rc = dir.join("debugger.rc");
    fs::write(&rc, "c\nquit\n").map_err(|e| Failure(format!("writing the rc file: {e}")))?;
    let mut command = Command::new(settings.binary);
    command
        .env("TERM", "dumb")
        .current_dir(&dir)
        .arg("-q")
        .arg("-f")
        .arg(&bochsrc)
        .arg("-rc")
        .arg(&rc);
    supervise(command, &serial, settings.timeout, settings.stream)
}

/// Boots the ISO in QEMU (TCG, or KVM with `kvm`).
pub fn run_qemu(iso: &Path, kvm: bool, timeout: Duration, stream: bool) -> Result<Outcome> {
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
    if kvm {
        command.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        command.args(["-cpu", "max"]);
    }
    supervise(command, &serial, timeout, stream)
}

/// `true` when this host can give a QEMU guest VMX (KVM with nested VMX on an Intel CPU).
pub fn kvm_nested_available() -> bool {
    let nested = fs::read_to_string("/sys/module/kvm_intel/parameters/nested")
        .is_ok_and(|value| matches!(value.trim(), "Y" | "y" | "1"));
    let vmx = fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "vmx"));
    Path::new("/dev/kvm").exists() && nested && vmx
}

fn table(model: &str, outcome: &Outcome) {
    println!("    {model}: {:.1?}", outcome.elapsed);
    for scenario in &outcome.report.scenarios {
        println!(
            "      {:<22} {:<12} sent={:<6} exits={:<6} handled={:<6} eois={:<5} lost={} dup={} {}",
            scenario.get("name"),
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

/// The emulator part of `cargo xtask test`.
pub fn test_suite() -> Result {
    step("emulator prerequisites (Debian packages)");
    util::ensure_apt(PACKAGES)?;
    step("example hypervisor image (ELF + GRUB ISO)");
    let iso = build_image()?;
    let mut failures = Vec::new();
    for model in TEST_MODELS {
        step(&format!("scenario suite in Bochs 2.7, cpu model {model}"));
        let settings = BochsRun {
            binary: "bochs",
            bios: "/usr/share/bochs/BIOS-bochs-latest",
            vga_bios: "/usr/share/vgabios/vgabios.bin",
            model,
            timeout: Duration::from_secs(180),
            stream: false,
        };
        let outcome = run_bochs(&iso, &settings)?;
        table(model, &outcome);
        let mut problems = report::problems(&outcome.report);
        if outcome.timed_out {
            problems.push("timed out".to_string());
        }
        for problem in problems {
            failures.push(format!("bochs {model}: {problem}"));
        }
    }
    step("QEMU TCG: the image boots and reports that VMX is unavailable");
    let outcome = run_qemu(&iso, false, Duration::from_secs(60), false)?;
    println!("    qemu-tcg: {:.1?}, exit code {:?}", outcome.elapsed, outcome.exit_code);
    for line in outcome.serial.lines().filter(|line| line.starts_with("HVKIT")) {
        println!("      {}", line.trim_end());
    }
    let expected_code = Some(((STATUS_NO_VMX << 1) | 1) as i32);
    if outcome.report.no_vmx.is_none() {
        failures.push("qemu-tcg: no HVKIT NOVMX line".to_string());
    }
    if outcome.report.exit_status != Some(STATUS_NO_VMX) || outcome.exit_code != expected_code {
        failures.push(format!(
            "qemu-tcg: expected status {STATUS_NO_VMX} (QEMU exit code {expected_code:?}), got {:?} / {:?}",
            outcome.report.exit_status, outcome.exit_code
        ));
    }
    if outcome.timed_out {
        failures.push("qemu-tcg: timed out".to_string());
    }
    if failures.is_empty() {
        note("all emulator runs passed");
        Ok(())
    } else {
        fail(format!("emulator suite failed:\n  {}", failures.join("\n  ")))
    }
}

const RUN_HELP: &str = "\
cargo xtask run [options]
  --emulator qemu|qemu-kvm|bochs   default: qemu-kvm when KVM offers nested VMX, else bochs
  --bochs PATH                     Bochs binary (default: bochs), e.g. an upstream build with FRED
  --bochs-bios PATH                BIOS image (default: /usr/share/bochs/BIOS-bochs-latest)
  --vga-bios PATH                  VGA BIOS (default: /usr/share/vgabios/vgabios.bin)
  --cpu MODEL                      Bochs cpu model (default: corei7_skylake_x)
  --timeout SECS                   kill the emulator after SECS (default: 300)
";

/// `cargo xtask run`.
pub fn run_command(args: &[String]) -> Result {
    let mut emulator: Option<String> = None;
    let mut bochs = "bochs".to_string();
    let mut bios = "/usr/share/bochs/BIOS-bochs-latest".to_string();
    let mut vga = "/usr/share/vgabios/vgabios.bin".to_string();
    let mut model = "corei7_skylake_x".to_string();
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
            "--bochs-bios" => bios = value("--bochs-bios")?,
            "--vga-bios" => vga = value("--vga-bios")?,
            "--cpu" => model = value("--cpu")?,
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
    util::ensure_apt(PACKAGES)?;
    let iso = build_image()?;
    step(&format!("booting in {emulator}"));
    let timeout = Duration::from_secs(timeout);
    let outcome = match emulator.as_str() {
        "bochs" => run_bochs(
            &iso,
            &BochsRun {
                binary: &bochs,
                bios: &bios,
                vga_bios: &vga,
                model: &model,
                timeout,
                stream: true,
            },
        )?,
        "qemu" => run_qemu(&iso, false, timeout, true)?,
        "qemu-kvm" => run_qemu(&iso, true, timeout, true)?,
        other => return fail(format!("unknown emulator {other}\n\n{RUN_HELP}")),
    };
    println!();
    if outcome.timed_out {
        return fail(format!("the emulator did not finish within {timeout:?}"));
    }
    match outcome.report.exit_status {
        Some(0) => Ok(()),
        Some(STATUS_NO_VMX) => {
            fail(format!("no VMX in this emulator: {}", outcome.report.no_vmx.unwrap_or_default()))
        }
        Some(status) => fail(format!("the hypervisor reported status {status}")),
        None => fail("the report has no HVKIT EXIT line"),
    }
}
