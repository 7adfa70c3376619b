package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/peerix/peerix/internal/config"
)

const completionAbout = `Prints a completion script for the shell named. To load it:
  bash: source <(peerix completion bash)       (or put it in /etc/bash_completion.d/peerix)
  zsh:  peerix completion zsh > "${fpath[1]}/_peerix"
  fish: peerix completion fish > ~/.config/fish/completions/peerix.fish`

// completion implements `peerix completion bash|zsh|fish`.
func completion(args []string, stdout io.Writer) error {
	if helpOnly(args, stdout, "completion bash|zsh|fish", completionAbout) {
		return nil
	}
	if len(args) != 1 {
		return fmt.Errorf("completion: name one shell: peerix completion bash|zsh|fish")
	}
	spec := completionSpec()
	switch args[0] {
	case "bash":
		writeBash(stdout, spec)
	case "zsh":
		writeZsh(stdout, spec)
	case "fish":
		writeFish(stdout, spec)
	default:
		return fmt.Errorf("completion: unknown shell %q (bash, zsh or fish)", args[0])
	}
	return nil
}

// compCommand is a subcommand as completion sees it.
type compCommand struct {
	name, summary string
	flags         []compFlag
	words         []string // positional words it takes (completion's shells)
}

// compFlag is one flag: what its value is.
type compFlag struct {
	name, usage string
	bool        bool
	choices     []string
	file, dir   bool
}

// Values of flags that completion knows more about than "some text".
var (
	flagChoices = map[string][]string{"mode": config.Modes, "filter": config.Filters}
	fileFlags   = []string{"config", "signing-key-file", "db"}
	dirFlags    = []string{"store-root", "state-dir", "out"}
)

// completionSpec describes every subcommand from its own flag set, so
// completion never falls behind the flags.
func completionSpec() []compCommand {
	sets := map[string]*flag.FlagSet{"serve": config.ServeFlags(), "tracker": config.TrackerFlags()}
	sets["status"], _ = statusFlags()
	sets["doctor"], _ = doctorFlags()
	sets["keygen"], _ = keygenFlags()
	var out []compCommand
	for _, c := range commands() {
		cc := compCommand{name: c.name, summary: c.summary}
		if c.name == "completion" {
			cc.words = []string{"bash", "zsh", "fish"}
		}
		if fs := sets[c.name]; fs != nil {
			fs.VisitAll(func(f *flag.Flag) {
				_, usage := flag.UnquoteUsage(f)
				cf := compFlag{name: f.Name, usage: usage, choices: flagChoices[f.Name],
					file: slices.Contains(fileFlags, f.Name), dir: slices.Contains(dirFlags, f.Name)}
				if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
					cf.bool = true
				}
				cc.flags = append(cc.flags, cf)
			})
		}
		out = append(out, cc)
	}
	return out
}

func writeBash(w io.Writer, spec []compCommand) {
	var names []string
	for _, c := range spec {
		names = append(names, c.name)
	}
	fmt.Fprintf(w, `# bash completion for peerix (peerix completion bash)
_peerix() {
    local cur prev
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "%s help --help --version -v" -- "$cur"))
        return
    fi
    local words=""
    case "${COMP_WORDS[1]}" in
`, strings.Join(names, " "))
	for _, c := range spec {
		var ws []string
		for _, f := range c.flags {
			ws = append(ws, "--"+f.name)
		}
		ws = append(append(ws, c.words...), "--help")
		fmt.Fprintf(w, "        %s) words=%q ;;\n", c.name, strings.Join(ws, " "))
	}
	fmt.Fprint(w, "    esac\n    case \"$prev\" in\n")
	seen := map[string]bool{}
	for _, c := range spec {
		for _, f := range c.flags {
			if seen[f.name] || f.bool {
				continue
			}
			seen[f.name] = true
			switch {
			case len(f.choices) > 0:
				fmt.Fprintf(w, "        --%s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", f.name, strings.Join(f.choices, " "))
			case f.dir:
				fmt.Fprintf(w, "        --%s) COMPREPLY=($(compgen -d -- \"$cur\")); return ;;\n", f.name)
			case f.file:
				fmt.Fprintf(w, "        --%s) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n", f.name)
			default:
				fmt.Fprintf(w, "        --%s) return ;;\n", f.name)
			}
		}
	}
	fmt.Fprint(w, `    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _peerix peerix
`)
}

// zshQuote makes text a description inside single quotes: an _arguments
// explanation ends at "]", so brackets become parentheses.
func zshQuote(s string) string {
	r := strings.NewReplacer("'", `'\''`, "[", "(", "]", ")", "`", "")
	return r.Replace(s)
}

func writeZsh(w io.Writer, spec []compCommand) {
	fmt.Fprint(w, "#compdef peerix\n# zsh completion for peerix (peerix completion zsh)\n\n_peerix() {\n    local -a commands\n    commands=(\n")
	for _, c := range spec {
		fmt.Fprintf(w, "        '%s:%s'\n", c.name, zshQuote(c.summary))
	}
	fmt.Fprint(w, `    )
    if (( CURRENT == 2 )); then
        _describe -t commands 'peerix command' commands
        return
    fi
    local cmd=$words[2]
    shift words
    (( CURRENT-- ))
    case $cmd in
`)
	for _, c := range spec {
		fmt.Fprintf(w, "        %s)\n            _arguments \\\n", c.name)
		for _, f := range c.flags {
			spec := "'--" + f.name + "[" + zshQuote(f.usage) + "]"
			switch {
			case f.bool:
			case len(f.choices) > 0:
				spec += ":" + f.name + ":(" + strings.Join(f.choices, " ") + ")"
			case f.dir:
				spec += ":" + f.name + ":_files -/"
			case f.file:
				spec += ":" + f.name + ":_files"
			default:
				spec += ":" + f.name + ":"
			}
			fmt.Fprintf(w, "                %s' \\\n", spec)
		}
		if len(c.words) > 0 {
			fmt.Fprintf(w, "                '1:shell:(%s)' \\\n", strings.Join(c.words, " "))
		}
		fmt.Fprint(w, "                '--help[show the help]'\n            ;;\n")
	}
	fmt.Fprint(w, "    esac\n}\n\nif [ \"$funcstack[1]\" = \"_peerix\" ]; then\n    _peerix \"$@\"\nelse\n    compdef _peerix peerix\nfi\n")
}

// fishQuote quotes text for fish in single quotes.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

func writeFish(w io.Writer, spec []compCommand) {
	fmt.Fprint(w, "# fish completion for peerix (peerix completion fish)\ncomplete -c peerix -f\n")
	var names []string
	for _, c := range spec {
		names = append(names, c.name)
	}
	for _, c := range spec {
		fmt.Fprintf(w, "complete -c peerix -n 'not __fish_seen_subcommand_from %s' -a %s -d %s\n", strings.Join(names, " "), c.name, fishQuote(c.summary))
	}
	fmt.Fprint(w, "complete -c peerix -n '__fish_use_subcommand' -s v -l version -d 'print the version and commit'\n")
	for _, c := range spec {
		cond := fishQuote("__fish_seen_subcommand_from " + c.name)
		for _, f := range c.flags {
			line := fmt.Sprintf("complete -c peerix -n %s -l %s -d %s", cond, f.name, fishQuote(f.usage))
			switch {
			case f.bool:
			case len(f.choices) > 0:
				line += " -x -a " + fishQuote(strings.Join(f.choices, " "))
			case f.dir:
				line += " -x -a '(__fish_complete_directories)'"
			case f.file:
				line += " -r -F"
			default:
				line += " -x"
			}
			fmt.Fprintln(w, line)
		}
		if len(c.words) > 0 {
			fmt.Fprintf(w, "complete -c peerix -n %s -a %s\n", cond, fishQuote(strings.Join(c.words, " ")))
		}
	}
}
