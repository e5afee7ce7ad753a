//! What a waiting command shows of its job on stderr: each phase as it begins (queued and
//! why, staging, running, publishing), as a spinner with the elapsed time on a terminal and
//! as one `[STATE] note` line per change otherwise, so a long compile or an unschedulable
//! job is never a silent wait.

use std::io::IsTerminal as _;
use std::time::Duration;

use shoal::proto::JobState;

/// The phases of one job, shown as they come.
pub struct Phases {
    spinner: Option<indicatif::ProgressBar>,
    shown: String,
}

impl Phases {
    /// Lines, or a spinner when stderr is a terminal and `spinner` allows it (not while
    /// the program's own output is streamed to the same terminal).
    pub fn new(spinner: bool) -> Phases {
        let spinner = (spinner && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Phases {
            spinner,
            shown: String::new(),
        }
    }

    /// The job entered `state`; `note` is the orchestrator's word on it.
    pub fn state(&mut self, state: JobState, note: &str) {
        let phase = match state {
            JobState::Queued if note.is_empty() || note == "queued" => "queued".to_owned(),
            JobState::Queued => format!("queued: {note}"),
            JobState::Scheduled => "assigned to an executor".to_owned(),
            JobState::Staging => "staging the program and its inputs".to_owned(),
            JobState::Running => "running".to_owned(),
            JobState::Publishing => "publishing the results".to_owned(),
            other => other.short_name().to_lowercase(),
        };
        self.show(state, &phase, note);
    }

    /// Why a queued job still waits (the orchestrator's scheduling note), when it changed.
    pub fn waiting(&mut self, reason: &str) {
        if reason.is_empty() || reason == "queued" {
            return;
        }
        self.show(JobState::Queued, &format!("queued: {reason}"), reason);
    }

    fn show(&mut self, state: JobState, phase: &str, note: &str) {
        if self.shown == phase {
            return;
        }
        self.shown = phase.to_owned();
        match &self.spinner {
            Some(spinner) => spinner.set_message(phase.to_owned()),
            None => crate::errln!("[{}] {note}", state.short_name()),
        }
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}
