//! The daemon: startup, scheduler, signals, reload, shutdown (the lead's
//! main loop lives here), and [`sdnotify`], its messages to systemd.

pub mod sdnotify;
