# Installs vsockd's system files at install time (cmake --install, CPack), where the install
# prefix is known: the systemd units (with the prefix's paths in ExecStart=), the
# sysusers.d entry and the sample configuration. Prefix /usr (packages) puts them where
# Debian 12 keeps them (/lib/systemd/system, /usr/lib/sysusers.d, /etc); any other prefix
# under it (/usr/local/lib/systemd/system, which systemd also reads, /usr/local/etc).
# Run by the vsockd component's install(CODE); inputs: VSOCKD_DIST_DIR, VSOCKD_WORK_DIR,
# VSOCKD_SBINDIR (relative to the prefix).
set(prefix "${CMAKE_INSTALL_PREFIX}")
if(prefix STREQUAL "/usr")
  set(sysconfdir /etc)
  set(unitdir /lib/systemd/system)
  set(sysusersdir /usr/lib/sysusers.d)
else()
  set(sysconfdir "${prefix}/etc")
  set(unitdir "${prefix}/lib/systemd/system")
  set(sysusersdir "${prefix}/lib/sysusers.d")
endif()

set(VSOCKD_SYSCONFDIR "${sysconfdir}")
set(VSOCKD_SBINDIR "${prefix}/${VSOCKD_SBINDIR}")
file(READ "${VSOCKD_DIST_DIR}/systemd/service-common.conf" VSOCKD_SERVICE_COMMON)
# One work directory per destination: installs may run at once (CTest runs its tests in
# parallel, and two of them install).
string(MD5 destination "$ENV{DESTDIR}${prefix}")
set(VSOCKD_WORK_DIR "${VSOCKD_WORK_DIR}/${destination}")
file(MAKE_DIRECTORY "${VSOCKD_WORK_DIR}")
set(units "")
foreach(unit vsockd.service vsockd@.service vsockd.socket vsockd@.socket)
  configure_file("${VSOCKD_DIST_DIR}/systemd/${unit}.in" "${VSOCKD_WORK_DIR}/${unit}" @ONLY)
  list(APPEND units "${VSOCKD_WORK_DIR}/${unit}")
endforeach()
file(INSTALL ${units} DESTINATION "${unitdir}"
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
configure_file("${VSOCKD_DIST_DIR}/systemd/vsockd.sysusers" "${VSOCKD_WORK_DIR}/vsockd.conf"
               COPYONLY)
file(INSTALL "${VSOCKD_WORK_DIR}/vsockd.conf" DESTINATION "${sysusersdir}"
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)

# The sample configuration: never over an administrator's file (packages: a conffile, which
# dpkg handles).
if(EXISTS "$ENV{DESTDIR}${sysconfdir}/vsockd/config.yaml")
  message(STATUS "Kept: $ENV{DESTDIR}${sysconfdir}/vsockd/config.yaml (the sample is "
                 "${VSOCKD_DIST_DIR}/config.yaml)")
else()
  file(INSTALL "${VSOCKD_DIST_DIR}/config.yaml" DESTINATION "${sysconfdir}/vsockd"
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endif()
