//! The `scorecast` command: parses the CLI and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scorecast::config::Config;
use scorecast::daemon::{load_config, Overrides};

#[derive(Parser)]
#[command(version, about = "Live relay for esports and sports broadcasts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (flags override the config file).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Validate a config file; exits non-zero and names the bad key.
    CheckConfig { file: PathBuf },
    /// Print the SHA-256 of an API token read from stdin (one trailing newline dropped), for
    /// `token_sha256` in `[[auth.tokens]]`.
    HashToken,
    /// Render the scorebug and graphics layers to a PNG (or a fade to a folder of PNGs), with
    /// no daemon and no video.
    RenderOverlay {
        /// A scoreboard in the built-in shape: a JSON file, or the JSON itself.
        #[arg(long)]
        score: Option<String>,
        /// The overlay's look: a JSON file with `position` and `margin`, or the JSON itself.
        #[arg(long)]
        theme: Option<String>,
        /// Graphics layers, as a relay's `graphics` (`{"theme", "style", "layers"}`): a JSON
        /// file, or the JSON itself. Drawn in the whole frame, each visible layer with its data.
        #[arg(long)]
        graphics: Option<String>,
        /// Where image layers' files are (default: the current directory).
        #[arg(long)]
        graphics_dir: Option<PathBuf>,
        /// Write the fade-in of this layer instead, one whole frame per video frame, as
        /// frame-000.png, frame-001.png, ... in the directory `--out`.
        #[arg(long)]
        fade: Option<String>,
        /// Frames a second, for fades.
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Frame size the overlay is drawn for.
        #[arg(long, default_value_t = 1280)]
        width: u32,
        #[arg(long, default_value_t = 720)]
        height: u32,
        /// Draw the scorebug as stale.
        #[arg(long)]
        stale: bool,
        /// Write the whole frame (transparent, bug in place) instead of the bug alone.
        #[arg(long)]
        full_frame: bool,
        /// Team logos (PNG or JPEG files).
        #[arg(long)]
        home_logo: Option<PathBuf>,
        #[arg(long)]
        away_logo: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Rust's own allocations (the API, the relay actors, the ingest) go to mimalloc, whose
/// per-thread heaps take no lock shared with GStreamer's threads: with glibc's arenas limited
/// (below), the API spent about 12 % of its time waiting on arena locks (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// glibc gives each new thread a malloc arena of its own, up to eight per core, and keeps
/// them: every publisher brings new streaming threads, so the daemon's RSS would climb by
/// tens of MiB per reconnect before it levels off. Two arenas keep it flat (measured in
/// BENCHMARKS.md). Must run before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread allocates concurrently yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scorecast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!(
                "{}: ok ({} relay{})",
                file.display(),
                config.relays.len(),
                if config.relays.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        Command::HashToken => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read the token from stdin")?;
            let token = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            scorecast::config::check_token_text(token)
                .map_err(|message| anyhow::anyhow!("the token on stdin {message}"))?;
            println!("{}", scorecast::api::auth::sha256_hex(token));
            Ok(())
        }
        Command::RenderOverlay {
            score,
            theme,
            graphics,
            graphics_dir,
            fade,
            fps,
            width,
            height,
            stale,
            full_frame,
            home_logo,
            away_logo,
            out,
        } => {
            let board: Option<scorecast::scores::Scoreboard> = score
                .map(|s| json_arg(&s).and_then(|j| serde_json::from_str(&j).context("--score")))
                .transpose()?;
            let theme: scorecast::render::Theme = match theme {
                Some(t) => serde_json::from_str(&json_arg(&t)?).context("--theme")?,
                None => Default::default(),
            };
            let load = |path: Option<PathBuf>| -> anyhow::Result<Option<image::RgbaImage>> {
                path.map(|p| {
                    image::open(&p)
                        .map(|i| i.to_rgba8())
                        .with_context(|| format!("cannot read logo {}", p.display()))
                })
                .transpose()
            };
            let (home, away) = (load(home_logo)?, load(away_logo)?);
            let logos = scorecast::render::Logos {
                home: home.as_ref(),
                away: away.as_ref(),
            };
            let bug = board
                .as_ref()
                .map(|board| scorecast::render::render(board, logos, stale, &theme, width, height));
            let Some(graphics) = graphics else {
                let bug = bug.context("give --score, --graphics or both")?;
                let (bug_w, bug_h) = bug.image.dimensions();
                let image = if full_frame {
                    frame_with(width, height, [&bug])
                } else {
                    bug.image.clone()
                };
                image
                    .save(&out)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                println!(
                    "{}: {}x{} bug at ({}, {}) in a {width}x{height} frame",
                    out.display(),
                    bug_w,
                    bug_h,
                    bug.x,
                    bug.y
                );
                return Ok(());
            };
            let spec: scorecast::relay::graphics::GraphicsSpec =
                serde_json::from_str(&json_arg(&graphics)?).context("--graphics")?;
            spec.check()
                .map_err(|(field, why)| anyhow::anyhow!("--graphics: {field}: {why}"))?;
            let dir = graphics_dir.unwrap_or_else(|| PathBuf::from("."));
            render_graphics(
                &spec,
                &dir,
                board.as_ref(),
                bug.as_ref(),
                fade.as_deref(),
                fps,
                (width, height),
                &out,
            )
        }
        Command::Run {
            config: config_path,
            overrides,
        } => {
            let config = load_config(config_path.as_deref(), overrides)?;
            scorecast::telemetry::init(config.server.log_format);
            scorecast::telemetry::route_gstreamer_log();
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(serve(config, config_path))
        }
    }
}

/// A transparent `width`x`height` frame with `pictures` drawn in their places.
fn frame_with<'a>(
    width: u32,
    height: u32,
    pictures: impl IntoIterator<Item = &'a scorecast::render::Bug>,
) -> image::RgbaImage {
    let mut frame = image::RgbaImage::new(width, height);
    for p in pictures {
        image::imageops::overlay(&mut frame, &p.image, i64::from(p.x), i64::from(p.y));
    }
    frame
}

/// `render-overlay --graphics`: the whole frame with the scorebug (if any) and every visible
/// layer, into `out`; or, with `fade`, that layer's fade-in frame by frame into the
/// directory `out`.
#[allow(clippy::too_many_arguments)]
fn render_graphics(
    spec: &scorecast::relay::graphics::GraphicsSpec,
    dir: &std::path::Path,
    board: Option<&scorecast::scores::Scoreboard>,
    bug: Option<&scorecast::render::Bug>,
    fade: Option<&str>,
    fps: u32,
    (width, height): (u32, u32),
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use scorecast::relay::graphics::{Graphics, LayerChange};
    let start = tokio::time::Instant::now();
    let mut graphics = Graphics::new(spec, Some(dir), fps, start);
    if let Some(why) = graphics.load_errors().into_iter().next() {
        anyhow::bail!("--graphics: {why}");
    }
    let style = graphics.style();
    let frame_at = |graphics: &Graphics, at| {
        let layers: Vec<scorecast::render::Bug> = graphics
            .draws(at, board)
            .iter()
            .map(|d| d.render(&style, width, height))
            .collect();
        frame_with(width, height, bug.into_iter().chain(&layers))
    };
    let Some(layer) = fade else {
        frame_at(&graphics, start)
            .save(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("{}: a {width}x{height} frame", out.display());
        return Ok(());
    };
    // Hidden first, then shown: the fade-in from its first frame to its last.
    let hide = LayerChange {
        visible: Some(false),
        data: None,
    };
    graphics
        .change(layer, hide, start)
        .map_err(|e| anyhow::anyhow!("--fade: {e}"))?;
    let shown_at = start + std::time::Duration::from_secs(3600);
    let show = LayerChange {
        visible: Some(true),
        data: None,
    };
    graphics
        .change(layer, show, shown_at)
        .map_err(|e| anyhow::anyhow!("--fade: {e}"))?;
    let frames = spec
        .layers
        .iter()
        .find(|l| l.id == layer)
        .and_then(|l| l.fade_frames)
        .unwrap_or(scorecast::relay::graphics::DEFAULT_FADE_FRAMES);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let frame = std::time::Duration::from_secs(1) / fps.max(1);
    for n in 0..=frames {
        let path = out.join(format!("frame-{n:03}.png"));
        frame_at(&graphics, shown_at + frame * n)
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "{}: {} frames of {layer:?} fading in at {fps} fps",
        out.display(),
        frames + 1
    );
    Ok(())
}

/// A JSON argument: the JSON itself when it starts with `{`, else a file holding it.
fn json_arg(arg: &str) -> anyhow::Result<String> {
    if arg.trim_start().starts_with('{') {
        Ok(arg.to_owned())
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read {arg}"))
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let api = tokio::net::TcpListener::bind(config.server.api_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.server.api_listen))?;
    let rtmp = tokio::net::TcpListener::bind(config.server.rtmp_listen)
        .await
        .with_context(|| format!("cannot listen for RTMP on {}", config.server.rtmp_listen))?;
    scorecast::daemon::run(config, config_path, api, rtmp, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
