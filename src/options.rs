//! One declaration per option: the [`settings!`](crate::settings) macro
//! that `config.rs` declares [`Settings`](crate::config::Settings) with.
//!
//! Each option is written once, as a field of the `settings!` block:
//!
//! ```text
//! /// io_uring submission queue entries per worker (power of two).   <- --help text and docs
//! #[arg(value_name = "N")]                                            <- clap details
//! ring_entries: u32 => "ring-entries",                                <- field, type, flag
//! ```
//!
//! The field is `Option<TYPE>` (unset = not given); its TOML key is the
//! field name in kebab-case (serde); `=> "flag"` gives the long flag
//! (`--ring-entries`), without it the option is TOML-only (`#[arg(skip)]`).
//! Any `#[arg(...)]` and `#[serde(...)]` attributes pass through to clap
//! and serde. From the block the macro derives the struct (clap::Args,
//! serde Deserialize/Serialize), the table of [`OptionInfo`]s and the
//! layering (`merge`).
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
}

impl OptionInfo {
    /// The TOML key: the field name in kebab-case (`ring-entries`).
    pub fn key(&self) -> String {
        self.field.replace('_', "-")
    }
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
                $name:ident: $ty:ty $(=> $flag:literal)?
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
                    },
                )*
            ];

            /// `over` on top of `self`: every option `over` sets wins,
            /// the others keep `self`'s value (`extra` fields: `over`'s).
            fn merge_options(self, over: $Settings) -> $Settings {
                $Settings {
                    $( $name: over.$name.or(self.$name), )*
                    $( $xname: over.$xname, )*
                }
            }
        }
    };
}
