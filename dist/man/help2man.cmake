# Makes one man page from a program's --help and --version with help2man, at build time, so
# the pages never drift from the options: OUT (gzip -9n, as Debian ships them). Inputs:
# HELP2MAN, GZIP, PROGRAM (the built binary), SECTION, SUMMARY (the NAME line), INCLUDE (an
# .h2m file of extra sections), OUT, EPOCH (SOURCE_DATE_EPOCH: the page's date).
foreach(v HELP2MAN GZIP PROGRAM SECTION SUMMARY INCLUDE OUT EPOCH)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "help2man.cmake: -D${v}=... is required")
  endif()
endforeach()
get_filename_component(name "${PROGRAM}" NAME)
set(page "${OUT}.tmp")
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env SOURCE_DATE_EPOCH=${EPOCH} LC_ALL=C.UTF-8
          ${HELP2MAN} --no-info --section=${SECTION} --name=${SUMMARY} --include=${INCLUDE}
          --output=${page} ${PROGRAM}
  RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "help2man ${name}: ${err}")
endif()
# CLI11's --help lines are laid out for a terminal: fill them left-aligned without
# hyphenation, and let long comma-joined words (--vm's key list) break after a comma, so
# groff has no line it cannot fit (lintian runs `man --warnings`).
file(READ ${page} text)
string(REGEX REPLACE "(\n\\.TH [^\n]*\n)" "\\1.ad l\n.nh\n" text "${text}")
string(REGEX REPLACE ",([^ \n])" ",\\\\:\\1" text "${text}")
file(WRITE ${page} "${text}")
execute_process(COMMAND ${GZIP} -9n -c ${page} OUTPUT_FILE ${OUT} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "gzip ${page} failed")
endif()
file(REMOVE ${page})
