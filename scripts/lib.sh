# lib.sh: helpers shared by the scripts (sourced, not run). The caller
# defines log.

# apt_install_missing PKG...: installs with apt the Debian packages dpkg does
# not know; without root it names them and exits.
apt_install_missing() {
	local missing=() pkg
	for pkg in "$@"; do
		dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
	done
	if ((${#missing[@]} == 0)); then
		log "Debian packages present: $*"
		return 0
	fi
	if [[ $(id -u) -ne 0 ]]; then
		log "missing Debian packages (${missing[*]}) and not root: install them by hand"
		exit 1
	fi
	log "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
