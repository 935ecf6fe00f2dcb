//! One declaration per option: the [`settings!`](crate::settings) macro
//! that `config.rs` declares [`Settings`](crate::config::Settings) with.
//!
//! Each option is written once, as a field of the `settings!` block:
//!
//! ```text
//! /// io_uring submission queue entries per worker (power of two).   <- --help text and docs
//! #[arg(value_name = "N")]                                            <- clap details
//! ring_entries: u32 => "ring-entries", restart,                       <- field, type, flag, reload class
//!     default DEFAULT_RING_ENTRIES,                                   <- value when unset
//!     check |v| (8..=32768).contains(v) && v.is_power_of_two()        <- its own check
//!         => "must be a power of two from 8 to 32768";                   and the message
//! ```
//!
//! The field is `Option<TYPE>` (unset = not given); its TOML key is the
//! field name in kebab-case (serde); `=> "flag"` gives the long flag
//! (`--ring-entries`), without it the option is TOML-only (`#[arg(skip)]`).
//! `live` or `restart` says what a reload does with a change: applies it,
//! or keeps the running value and names the option in one warning line
//! ([`crate::reload_plan`]; a unit test there fails for an option that
//! is neither). Marks may follow it: `+ path` for a file or folder
//! option (its value's type implements [`Paths`]: relative paths in the
//! config file are taken from the file's folder), `+ frontend` for an
//! option a `[[frontend]]` table may set too.
//! Any `#[arg(...)]` and `#[serde(...)]` attributes pass through to clap
//! and serde. From the block the macro derives the struct (clap::Args,
//! serde Deserialize/Serialize), the table of [`OptionInfo`]s, the
//! layering (`merge`), `with_defaults`, an accessor per option with a
//! default (`settings.ring_entries()`: the value or the default),
//! `check_values` (each option's own check; the checks between options
//! stay in `Settings::validate`), `each_path`, `show_defaults` (clap's
//! `--help` says `[default: ...]` for the options with a default), and `FrontendSetting` (the
//! options marked `frontend`, with their docs and serde attributes) with
//! its layering over the top-level settings. `docs/options-plan.md` says
//! how to add an option.
//!
//! Sans-IO: declarations and pure functions only.

#![forbid(unsafe_code)]

/// What is known about one option, from its declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionInfo {
    /// The `Settings` field name (`ring_entries`).
    pub field: &'static str,
    /// The long flag (`--ring-entries`); empty for a TOML-only option.
    pub flag: &'static str,
    /// What a reload (SIGHUP) does with a change to it.
    pub reload: Reload,
}

/// What a reload does with a changed option (`live` or `restart` in its
/// declaration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Applied to new connections at once.
    Live,
    /// Fixed when the process starts (sizes rings and buffers, pins
    /// threads, binds the admin endpoint, drops privileges, starts
    /// threads): a change is named in one warning line and the running
    /// value stays ([`crate::reload_plan`]).
    Restart,
}

impl OptionInfo {
    /// The TOML key: the field name in kebab-case (`ring-entries`).
    pub fn key(&self) -> String {
        self.field.replace('_', "-")
    }

    /// How messages name it: its flag, or its TOML key when it has none.
    pub fn name(&self) -> String {
        if self.flag.is_empty() {
            self.key()
        } else {
            self.flag.to_owned()
        }
    }
}

/// The file and folder paths in an option's value (options declared
/// `path`).
pub trait Paths {
    /// Calls `f` on each path.
    fn each_path(&mut self, f: &mut dyn FnMut(&mut String));
}

impl Paths for String {
    fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(self)
    }
}

impl<T: Paths> Paths for Option<T> {
    fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
        if let Some(v) = self {
            v.each_path(f)
        }
    }
}

impl<T: Paths> Paths for Vec<T> {
    fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
        for v in self {
            v.each_path(f)
        }
    }
}

/// A declared default, converted to the option's type (`"info"` to a
/// `String`).
#[doc(hidden)]
pub fn default_of<T, U: Into<T>>(u: U) -> T {
    u.into()
}

/// `arg` with `[default: SHOWN]` after its help (and long help), unless
/// it is a bare switch.
#[doc(hidden)]
pub fn with_default_shown(arg: clap::Arg, shown: &str) -> clap::Arg {
    if arg.get_num_args().is_some_and(|n| n.max_values() == 0) {
        // A bare switch (`--ocsp-fetch`): off unless given.
        return arg;
    }
    let add = |h: Option<&clap::builder::StyledStr>| {
        format!(
            "{} [default: {shown}]",
            h.map(|h| h.to_string()).unwrap_or_default()
        )
    };
    let help = add(arg.get_help());
    let long = arg.get_long_help().map(|h| add(Some(h)));
    let arg = arg.help(help);
    match long {
        Some(long) => arg.long_help(long),
        None => arg,
    }
}

/// Whether `v` passes the declared check `pred`.
#[doc(hidden)]
pub fn holds<T: ?Sized>(v: &T, pred: impl Fn(&T) -> bool) -> bool {
    pred(v)
}

/// The error of a failed declared check: `--flag: VALUE REASON`, the
/// value escaped onto one line.
#[doc(hidden)]
pub fn check_failed(
    flag: &'static str,
    value: &dyn std::fmt::Display,
    reason: &str,
) -> crate::config::ConfigError {
    crate::config::ConfigError::OutOfRange {
        flag,
        value: value.to_string().escape_debug().to_string(),
        reason: reason.to_owned(),
    }
}

/// `CODE` when `MARK` is among the declaration's marks (`+ path`,
/// `+ frontend`), else nothing: `option_if!([MARKS] MARK { CODE })`.
#[doc(hidden)]
#[macro_export]
macro_rules! option_if {
    ([] $want:ident $code:tt) => {};
    ([$first:ident $($rest:ident)*] $want:ident $code:tt) => {
        $crate::option_if_eq!($first $want [$($rest)*] $code);
    };
}

/// [`option_if!`]'s comparison of one mark (the known marks only: an
/// unknown one is a compile error).
#[doc(hidden)]
#[macro_export]
macro_rules! option_if_eq {
    (path path $rest:tt { $($code:tt)* }) => { $($code)* };
    (frontend frontend $rest:tt { $($code:tt)* }) => { $($code)* };
    (shared shared $rest:tt { $($code:tt)* }) => { $($code)* };
    (path $want:ident $rest:tt $code:tt) => { $crate::option_if!($rest $want $code); };
    (frontend $want:ident $rest:tt $code:tt) => { $crate::option_if!($rest $want $code); };
    (shared $want:ident $rest:tt $code:tt) => { $crate::option_if!($rest $want $code); };
}

/// The `[[frontend]]` table: the options declared `+ frontend`, with
/// their docs and serde attributes (clap's dropped), and a `name`.
#[doc(hidden)]
#[macro_export]
macro_rules! frontend_setting {
    (@fields [$($out:tt)*]) => {
        /// One `[[frontend]]` table: the options declared `+ frontend` in
        /// [`Settings`](crate::config::Settings), each over the top-level
        /// value when set (see [`crate::frontend`]).
        #[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct FrontendSetting {
            /// A name for logs and `ringterm check` (default: `frontend N`).
            pub name: Option<String>,
            $($out)*
        }
    };
    (@fields $out:tt { [$($attrs:tt)*] $name:ident [$ty:ty] [$($marks:ident)*] } $($rest:tt)*) => {
        $crate::frontend_setting!(@attrs $out [] [$($attrs)*] { $name [$ty] [$($marks)*] } $($rest)*);
    };
    (@attrs $out:tt $kept:tt [# [arg $($a:tt)*] $($more:tt)*] $field:tt $($rest:tt)*) => {
        $crate::frontend_setting!(@attrs $out $kept [$($more)*] $field $($rest)*);
    };
    (@attrs $out:tt [$($kept:tt)*] [# [$($a:tt)*] $($more:tt)*] $field:tt $($rest:tt)*) => {
        $crate::frontend_setting!(@attrs $out [$($kept)* # [$($a)*]] [$($more)*] $field $($rest)*);
    };
    (@attrs $out:tt $kept:tt [] { $name:ident [$ty:ty] $marks:tt } $($rest:tt)*) => {
        $crate::frontend_setting!(@marks $out $kept { $name [$ty] } $marks $($rest)*);
    };
    (@marks [$($out:tt)*] [$($kept:tt)*] { $name:ident [$ty:ty] } [frontend $($m:ident)*] $($rest:tt)*) => {
        $crate::frontend_setting!(@fields [$($out)* $($kept)* pub $name: Option<$ty>,] $($rest)*);
    };
    (@marks $out:tt $kept:tt $field:tt [$m0:ident $($m:ident)*] $($rest:tt)*) => {
        $crate::frontend_setting!(@marks $out $kept $field [$($m)*] $($rest)*);
    };
    (@marks $out:tt $kept:tt $field:tt [] $($rest:tt)*) => {
        $crate::frontend_setting!(@fields $out $($rest)*);
    };
}

/// The [`Reload`] class of a declaration's `live` or `restart`.
#[doc(hidden)]
#[macro_export]
macro_rules! option_reload {
    (live) => {
        $crate::options::Reload::Live
    };
    (restart) => {
        $crate::options::Reload::Restart
    };
}

/// `--FLAG` for a declared flag, `""` without one.
#[doc(hidden)]
#[macro_export]
macro_rules! option_flag {
    () => {
        ""
    };
    ($flag:literal) => {
        concat!("--", $flag)
    };
}

/// Declares the settings struct: see the [module docs](crate::options).
#[doc(hidden)]
#[macro_export]
macro_rules! settings {
    (
        $(#[$smeta:meta])*
        pub struct $Settings:ident {
            $(
                $(#[$($attr:tt)*])*
                $name:ident: $ty:ty $(=> $flag:literal)?, $reload:ident $(+ $marks:ident)*
                $(, default $default:expr)?
                $(, check $pred:expr => $reason:literal)?
                ;
            )*
        }
        extra {
            $(
                $(#[$($xattr:tt)*])*
                $xname:ident: $xty:ty;
            )*
        }
    ) => {
        $(#[$smeta])*
        pub struct $Settings {
            $(
                $(#[$($attr)*])*
                $(#[arg(long = $flag, global = true)])?
                pub $name: Option<$ty>,
            )*
            $(
                $(#[$($xattr)*])*
                pub $xname: $xty,
            )*
        }

        impl $Settings {
            /// Every option, in declaration order.
            pub const OPTIONS: &'static [$crate::options::OptionInfo] = &[
                $(
                    $crate::options::OptionInfo {
                        field: stringify!($name),
                        flag: $crate::option_flag!($($flag)?),
                        reload: $crate::option_reload!($reload),
                    },
                )*
            ];

            /// The declared flag of `field` (`ring_entries`: `--ring-entries`);
            /// `""` for a TOML-only option.
            pub fn flag_of(field: &str) -> &'static str {
                Self::OPTIONS
                    .iter()
                    .find(|o| o.field == field)
                    .map_or("", |o| o.flag)
            }

            /// Every unset option that has a default, set to it: the values
            /// in force.
            pub fn with_defaults(mut self) -> Self {
                $($(
                    if self.$name.is_none() {
                        self.$name = Some($crate::options::default_of::<$ty, _>($default));
                    }
                )?)*
                self
            }

            /// Runs each option's own check (declared with `check`) on
            /// its value, if set; the error names the flag
            /// ([`Layered`](crate::config::Layered) turns it into the file
            /// and key when the file set it).
            pub fn check_values(&self) -> Result<(), $crate::config::ConfigError> {
                $($(
                    if let Some(v) = &self.$name {
                        if !$crate::options::holds(v, $pred) {
                            return Err($crate::options::check_failed(
                                Self::flag_of(stringify!($name)),
                                v,
                                $reason,
                            ));
                        }
                    }
                )?)*
                Ok(())
            }

            /// Calls `f` on every file or folder path in the options
            /// declared `path` (relative paths in the config file are
            /// taken from its folder).
            pub fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
                $(
                    $crate::option_if!([$($marks)*] path {
                        if let Some(v) = &mut self.$name {
                            $crate::options::Paths::each_path(v, f);
                        }
                    });
                )*
            }

            /// `over` on top of `self`: every option `over` sets wins,
            /// the others keep `self`'s value (`extra` fields: `over`'s).
            fn merge_options(self, over: $Settings) -> $Settings {
                $Settings {
                    $( $name: over.$name.or(self.$name), )*
                    $( $xname: over.$xname, )*
                }
            }
        }

        $crate::frontend_setting!(@fields []
            $( { [$(#[$($attr)*])*] $name [$ty] [$($marks)*] } )*
        );

        impl $crate::options::Paths for FrontendSetting {
            fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
                $(
                    $crate::option_if!([$($marks)*] frontend {
                        $crate::option_if!([$($marks)*] path {
                            $crate::options::Paths::each_path(&mut self.$name, f);
                        });
                    });
                )*
            }
        }

        impl FrontendSetting {
            /// Every option this table sets, over `s` (the top-level
            /// settings).
            pub(crate) fn set_over(&self, s: &mut $Settings) {
                $(
                    $crate::option_if!([$($marks)*] frontend {
                        if self.$name.is_some() {
                            s.$name = self.$name.clone();
                        }
                    });
                )*
            }
        }

        impl $Settings {
            /// `cmd` (with these settings' flags) with `[default: VALUE]`
            /// after the help of each flag whose option declares a
            /// default. Only the help text: a clap default would make
            /// every flag look set, and win over the config file.
            pub fn show_defaults(mut cmd: clap::Command) -> clap::Command {
                $($(
                    let id = stringify!($name);
                    if cmd.get_arguments().any(|a| a.get_id() == id) {
                        let shown = $crate::options::default_of::<$ty, _>($default).to_string();
                        cmd = cmd.mut_arg(id, |a| $crate::options::with_default_shown(a, &shown));
                    }
                )?)*
                cmd
            }
        }

        /// The value in force of each option with a default: its value,
        /// or the default.
        #[allow(dead_code)]
        impl $Settings {
            $($(
                #[doc = concat!("`", stringify!($name), "`, or its default.")]
                pub fn $name(&self) -> $ty {
                    self.$name
                        .clone()
                        .unwrap_or_else(|| $crate::options::default_of::<$ty, _>($default))
                }
            )?)*
        }
    };
}
